//! The command line (SPEC section 2): flags are parsed and checked into typed options here,
//! then handed to the library. Nothing below this module prints except through `output`.

pub mod output;
pub mod progress;

/// `println!` that never panics: standard output closed early (`igaflow run … | head`) loses
/// the rest of the report, not the process's exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Pipeline;
use crate::error::{Error, Result, exit};
use crate::jobs::{self, RunOptions};
use crate::store::Store;
use output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "igaflow",
    version,
    about = "Set-based identity governance batch engine on DataFusion and Delta Lake"
)]
pub struct Cli {
    /// Silence progress output.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// `json` prints one JSON object per event on stderr (for schedulers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Memory the query engine may use before it spills to disk (e.g. 1GiB, 512MiB; default:
    /// three quarters of the machine's memory).
    #[arg(long, global = true, env = "IGAFLOW_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job of a pipeline.
    Run {
        /// Folder holding pipeline.toml.
        pipeline: PathBuf,
        /// Name of the job ([[job]] name).
        #[arg(long)]
        job: String,
        /// Store path or URI (default: $IGAFLOW_STORE, then [store] uri, then var/<pipeline name>).
        #[arg(long)]
        store: Option<String>,
        /// Commit even when a threshold blocks.
        #[arg(long)]
        force: bool,
        /// Compute and report, commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate date-bounded rules at this date (YYYY-MM-DD) instead of today.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Check pipeline.toml: keys, names, references, the job graph, expressions (a missing export folder is a warning).
    Validate { pipeline: PathBuf },
    /// Query the store with SQL.
    Sql {
        #[arg(long)]
        store: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Write the result to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Read the tables as they were when this run ended.
        #[arg(long)]
        as_of: Option<String>,
        query: String,
    },
    /// Run the pipeline's jobs at their `schedule` (cron, UTC) or `interval` until SIGTERM.
    Schedule {
        pipeline: PathBuf,
        #[arg(long)]
        store: Option<String>,
    },
    /// Write a synthetic company (exports, manual requests) and its pipeline to OUT_DIR.
    Generate {
        /// Number of persons.
        #[arg(long)]
        identities: usize,
        /// Random seed: same seed, same bytes.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        out_dir: PathBuf,
    },
    /// List past runs, or show one run's tasks.
    Runs {
        #[arg(long)]
        store: Option<String>,
        run_id: Option<String>,
    },
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::INVALID_INPUT
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.log_format, cli.quiet);
    let limit = match cli.memory_limit.as_deref() {
        Some(text) => match crate::engine::parse_size(text) {
            Some(bytes) => Some(bytes),
            None => {
                report_error(&Error::Usage(format!(
                    "--memory-limit `{text}` is not a size: use e.g. 1GiB, 512MiB or a number of bytes"
                )));
                return exit::INVALID_INPUT;
            }
        },
        None => crate::engine::default_memory_limit(),
    };
    if let Some(bytes) = limit
        && let Err(e) = crate::engine::set_memory_limit(
            bytes,
            std::env::var("IGAFLOW_JOINS").is_ok_and(|v| v == "sort-merge"),
            cli.memory_limit.is_some(),
        )
    {
        report_error(&Error::Engine(e));
        return exit::TASK_FAILED;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::TASK_FAILED;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            e.exit_code()
        }
    }
}

fn report_error(e: &Error) {
    let mut text = format!("error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    if json_logs() {
        tracing::error!(exit_code = e.exit_code(), "{text}");
    } else {
        eprintln!("{text}");
    }
}

/// `--log-format json`: stderr carries only JSON events.
fn json_logs() -> bool {
    std::env::var_os("IGAFLOW_LOG_JSON").is_some()
}

fn init_logging(format: LogFormat, quiet: bool) {
    // The Delta kernel warns (with a backtrace) about file statistics it cannot use, which
    // only makes a scan skip less: not something a user can act on.
    let default = if quiet {
        "error"
    } else {
        "warn,delta_kernel=error,buoyant_kernel=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IGAFLOW_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if format == LogFormat::Json {
            // igaflow's own events; libraries only when they warn.
            "warn,igaflow=info,delta_kernel=error,buoyant_kernel=error"
        } else {
            default
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        // SAFETY: set before any other thread exists (the runtime starts afterwards).
        unsafe { std::env::set_var("IGAFLOW_LOG_JSON", "1") };
        let _ = builder.json().try_init();
    } else {
        let _ = builder.without_time().with_target(false).try_init();
    }
}

/// The store of a pipeline: `--store`, else `$IGAFLOW_STORE`, else `[store] uri` (relative to
/// the pipeline folder), else `var/<pipeline name>` under the current directory.
pub fn pipeline_store_uri(flag: Option<&str>, pipeline: &Pipeline) -> String {
    if let Some(s) = flag {
        return s.to_string();
    }
    if let Ok(s) = std::env::var("IGAFLOW_STORE")
        && !s.is_empty()
    {
        return s;
    }
    if let Some(u) = &pipeline.store_uri {
        if u.contains("://") || Path::new(u).is_absolute() {
            return u.clone();
        }
        return pipeline.dir.join(u).to_string_lossy().into_owned();
    }
    format!("var/{}", pipeline.name)
}

/// The store a job of `pipeline` runs on ([`pipeline_store_uri`]), with the pipeline's
/// write settings. `$IGAFLOW_WRITE_PART_ROWS` sets the fewest rows of a table part written on
/// its own ([`Store::with_parallel_tables`]; tests lower it to write small tables in parts).
fn job_store(flag: Option<&str>, pipeline: &Pipeline) -> Result<Store> {
    let part_rows = std::env::var("IGAFLOW_WRITE_PART_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    Ok(Store::open(&pipeline_store_uri(flag, pipeline))?
        .with_repeated_columns(pipeline.repeated_columns())
        .with_indexed_columns(pipeline.indexed_columns())
        .with_parallel_tables(pipeline.parallel_tables(part_rows))
        .with_unordered_columns(pipeline.unordered_columns()))
}

/// The store of `sql` and `runs`, which have no pipeline: `--store`, else `$IGAFLOW_STORE`,
/// else the only store under `./var/`.
fn analyst_store_uri(flag: Option<&str>) -> Result<String> {
    if let Some(s) = flag {
        return Ok(s.to_string());
    }
    if let Ok(s) = std::env::var("IGAFLOW_STORE")
        && !s.is_empty()
    {
        return Ok(s);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("var")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("_igaflow").is_dir())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.to_string_lossy().into_owned()),
        [] => Err(Error::Usage(
            "no store given: pass --store PATH_OR_URI or set IGAFLOW_STORE (no store was found under ./var/)".into(),
        )),
        many => Err(Error::Usage(format!(
            "several stores under ./var/ ({}): pass --store to choose one",
            many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn open_existing(uri: &str) -> Result<Store> {
    if !uri.contains("://") && !Path::new(uri).join("_igaflow").is_dir() {
        return Err(Error::Usage(format!(
            "{uri} is not an igaflow store (no _igaflow folder): run a job first, or check --store"
        )));
    }
    Store::open(uri)
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { pipeline } => {
            let p = Pipeline::load(&pipeline)?;
            // A missing export folder fails only the jobs that synchronize its connector, when
            // they run: the folder is the environment's, which may differ where they run.
            for c in p.connectors.values() {
                if let Some(problem) = &c.exports_missing {
                    let jobs: Vec<&str> = p
                        .jobs
                        .iter()
                        .filter(|j| j.synchronizes(&c.name))
                        .map(|j| j.name.as_str())
                        .collect();
                    eprintln!(
                        "warning: {}:{}: {} (jobs that would stop on it: {})",
                        p.file.display(),
                        problem.line,
                        problem.message,
                        if jobs.is_empty() {
                            "none".to_string()
                        } else {
                            jobs.join(", ")
                        }
                    );
                }
            }
            say!(
                "{}: ok — {} connector(s), {} entit{}, {} link(s), {} job(s)",
                p.file.display(),
                p.connectors.len(),
                p.entities.len(),
                if p.entities.len() == 1 { "y" } else { "ies" },
                p.links.len(),
                p.jobs.len()
            );
            Ok(exit::OK)
        }
        Command::Run {
            pipeline,
            job,
            store,
            force,
            dry_run,
            as_of,
        } => {
            let as_of = match as_of {
                Some(d) => Some(NaiveDate::parse_from_str(&d, "%Y-%m-%d").map_err(|_| {
                    Error::Usage(format!("--as-of `{d}` is not a date: use YYYY-MM-DD"))
                })?),
                None => None,
            };
            let p = Pipeline::load(&pipeline)?;
            let store = job_store(store.as_deref(), &p)?;
            if cli.memory_limit.is_none() {
                crate::engine::keep_freed_memory();
            }
            let opts = RunOptions {
                force,
                dry_run,
                as_of,
                trigger: "manual".into(),
                quiet: cli.quiet,
            };
            let report = jobs::run_job(&p, &store, &job, &opts).await?;
            print_report(&report, cli.quiet);
            Ok(report.exit_code)
        }
        Command::Schedule { pipeline, store } => {
            let p = Pipeline::load(&pipeline)?;
            let store = job_store(store.as_deref(), &p)?;
            if cli.memory_limit.is_none() {
                crate::engine::keep_freed_memory();
            }
            jobs::schedule(&p, &store, cli.quiet).await
        }
        Command::Sql {
            store,
            format,
            output,
            as_of,
            query,
        } => {
            let store = open_existing(&analyst_store_uri(store.as_deref())?)?;
            let latest = store.catalog().await?;
            let mut catalog = match &as_of {
                Some(run) => store.catalog_as_of_run(run).await?,
                None => latest.clone(),
            };
            // Versions removed by history anonymization (SPEC section 9) cannot be read.
            let removed: Vec<String> = catalog
                .tables
                .iter()
                .filter(|(t, v)| latest.floors.get(*t).is_some_and(|f| *v < f))
                .map(|(t, _)| t.clone())
                .collect();
            for t in &removed {
                catalog.tables.remove(t);
            }
            let hint = if removed.is_empty() {
                String::new()
            } else {
                format!(
                    " (as of this run, these tables are not available: their older versions were removed when an owner's personal data was anonymized: {})",
                    removed.join(", ")
                )
            };
            let ctx = crate::engine::context();
            store.register_all(&ctx, &catalog).await?;
            // Queries only: an INSERT or a DROP would change nothing but this session's view
            // of the store, and report success.
            let read_only = datafusion::execution::context::SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false);
            let df = ctx.sql_with_options(&query, read_only).await.map_err(|e| {
                let text = e.strip_backtrace();
                let why =
                    if text.contains("DML not supported") || text.contains("DDL not supported") {
                        " (igaflow sql only reads the store: its tables change through jobs)"
                    } else {
                        ""
                    };
                Error::Usage(format!("query: {text}{why}{hint}"))
            })?;
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .collect()
                .await
                .map_err(|e| Error::Usage(format!("query: {}", e.strip_backtrace())))?;
            output::write(&batches, schema, format, output.as_deref())?;
            Ok(exit::OK)
        }
        Command::Generate {
            identities,
            seed,
            out_dir,
        } => {
            let g = crate::generate::generate(identities, seed, &out_dir)?;
            say!(
                "generated {} persons, {} AD accounts, {} groups, {} memberships, {} ERP users, {} roles in {}\nrun: igaflow run {} --job complete",
                g.persons,
                g.accounts,
                g.groups,
                g.memberships,
                g.erp_users,
                g.roles,
                out_dir.display(),
                out_dir.join("pipeline").display()
            );
            Ok(exit::OK)
        }
        Command::Runs { store, run_id } => {
            let store = open_existing(&analyst_store_uri(store.as_deref())?)?;
            let batches = match &run_id {
                Some(id) => jobs::show_run(&store, id).await?,
                None => jobs::list_runs(&store).await?,
            };
            if batches.iter().map(|b| b.num_rows()).sum::<usize>() == 0 {
                match run_id {
                    Some(id) => return Err(Error::Usage(format!("no run `{id}` in this store"))),
                    None => say!("no runs yet"),
                }
                return Ok(exit::OK);
            }
            let schema = batches[0].schema();
            output::write(&batches, schema, Format::Table, None)?;
            Ok(exit::OK)
        }
    }
}

fn print_report(r: &jobs::RunReport, quiet: bool) {
    if quiet {
        return;
    }
    say!("run {} · job {} · {}", r.run_id, r.job, r.status);
    let name_w = r
        .tasks
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    say!(
        "{:<name_w$}  {:<10}  {:>8}  {:>10}  {:>9}  message",
        "task",
        "status",
        "seconds",
        "rows read",
        "changes"
    );
    for t in &r.tasks {
        let mut msg = t.outcome.message.replace('\n', " ");
        if msg.chars().count() > 160 {
            msg = msg.chars().take(157).collect::<String>() + "…";
        }
        say!(
            "{:<name_w$}  {:<10}  {:>8.2}  {:>10}  {:>9}  {}",
            t.name,
            t.outcome.status.name(),
            t.seconds,
            t.outcome.rows_read,
            t.outcome.changes,
            msg
        );
    }
    for t in r.tasks.iter().filter(|_| !json_logs()) {
        if matches!(
            t.outcome.status,
            crate::tasks::TaskStatus::Failed | crate::tasks::TaskStatus::Blocked
        ) {
            eprintln!(
                "{} {}: {}",
                t.name,
                t.outcome.status.name(),
                t.outcome.message
            );
        }
    }
}
