//! The errors users meet, classified by who is at fault, and the exit code each maps to.
//!
//! Configuration and input-data errors carry the file, line and offending value so that the
//! message alone says what to fix; environment and engine errors carry their cause chain.

use std::path::PathBuf;

/// Exit codes of the command line (SPEC section 2).
pub mod exit {
    pub const OK: u8 = 0;
    pub const TASK_FAILED: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const BLOCKED: u8 = 3;
    pub const LOCKED: u8 = 4;
}

/// One problem in `pipeline.toml`, located by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's configuration: unknown keys, wrong types, bad names, expressions that do not plan.
    #[error("{}", render_config(file, problems))]
    Config {
        file: PathBuf,
        problems: Vec<ConfigProblem>,
    },

    /// The user's data: a CSV export that cannot be loaded.
    #[error("{file}: {message}")]
    Input { file: PathBuf, message: String },

    /// The command line itself, or a request the store refuses (initial load into a full table).
    #[error("{0}")]
    Usage(String),

    /// Another run of the same job holds the lock.
    #[error("{0}")]
    Locked(String),

    /// The store: object store, Delta log, catalog.
    #[error("store: {0}")]
    Store(String),

    /// The query engine failed on a valid plan (a bug or the environment).
    #[error("query engine: {0}")]
    Engine(#[from] datafusion::error::DataFusionError),

    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Another process committed a table this one was about to replace, after this one read
    /// it; nothing of this commit is visible. The task runs again on the new state.
    #[error("{0}")]
    Conflict(String),

    /// A job finished with a failed task (the message lists them).
    #[error("{0}")]
    TaskFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::Input { .. } | Error::Usage(_) => exit::INVALID_INPUT,
            Error::Locked(_) => exit::LOCKED,
            _ => exit::TASK_FAILED,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn store(message: impl std::fmt::Display) -> Self {
        Error::Store(message.to_string())
    }

    pub fn config(file: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            problems: vec![ConfigProblem {
                line,
                message: message.into(),
            }],
        }
    }
}

fn render_config(file: &std::path::Path, problems: &[ConfigProblem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}:{}: {}", file.display(), p.line, p.message));
    }
    out
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Self::Engine(e.into())
    }
}
