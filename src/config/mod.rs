//! `pipeline.toml`: loading, the resolved model every task works from, and validation.
//!
//! Loading is two steps. serde reads the file into [`raw`] structs (unknown keys and wrong
//! types fail there, with a line), then [`validate`] checks what serde cannot — names, references,
//! folders, the job graph, expressions planned against the declared schemas — and collects every
//! problem it finds, so one `igaflow validate` run lists them all.

mod expand;
pub mod model;
pub mod raw;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use indexmap::IndexMap;

use crate::error::{ConfigProblem, Error, Result};

pub use model::*;
pub use validate::TASK_TYPES;

/// Column types of entity tables (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Float,
    Bool,
    Date,
    Timestamp,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "int" => Self::Int,
            "float" => Self::Float,
            "bool" => Self::Bool,
            "date" => Self::Date,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Int => DataType::Int64,
            Self::Float => DataType::Float64,
            Self::Bool => DataType::Boolean,
            Self::Date => DataType::Date32,
            Self::Timestamp => timestamp_type(),
        }
    }
}

/// A duration such as `500ms`, `30s`, `10m`, `2h` or `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds))
}

/// Timestamps are stored as microseconds in UTC: Parquet readers other than DataFusion see them
/// as timestamps (second precision would land as a plain integer).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

#[derive(Debug, Clone)]
pub struct Computed {
    pub name: String,
    pub expr: String,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRow {
    Fail,
    Quarantine,
}

#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub on_bad_row: OnBadRow,
    pub command_column: String,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            on_bad_row: OnBadRow::Fail,
            command_column: "command".into(),
        }
    }
}

/// Synchronization thresholds of one entity or link (SPEC section 4).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub min_rows: u64,
    pub max_deleted_percent: f64,
    pub max_deleted: Option<u64>,
    pub max_inserted_percent: Option<f64>,
    pub max_inserted: Option<u64>,
    pub max_updated_percent: Option<f64>,
    pub max_updated: Option<u64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_rows: 100,
            max_deleted_percent: 30.0,
            max_deleted: None,
            max_inserted_percent: None,
            max_inserted: None,
            max_updated_percent: None,
            max_updated: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Connector {
    pub name: String,
    pub exports: PathBuf,
    /// The export folder does not exist: the problem, with the line of `exports`, that a job
    /// reading this connector's files fails with.
    pub exports_missing: Option<crate::error::ConfigProblem>,
    pub update: bool,
}

#[derive(Debug, Clone)]
pub struct Entity {
    pub name: String,
    pub connector: String,
    pub file: String,
    pub key: String,
    pub csv: CsvOptions,
    pub thresholds: Thresholds,
    pub columns: Vec<Column>,
    pub computed: Vec<Computed>,
    pub line: usize,
}

impl Entity {
    pub fn key_type(&self) -> ColumnType {
        self.columns
            .iter()
            .find(|c| c.name == self.key)
            .map(|c| c.ty)
            .expect("invariant: validation checked that the key is a declared column")
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub entity: String,
    pub column: String,
    pub separator: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub connector: String,
    pub file: String,
    pub from: Endpoint,
    pub to: Endpoint,
    pub csv: CsvOptions,
    pub thresholds: Thresholds,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Complete,
    Incremental,
    Initial,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Incremental => "incremental",
            Self::Initial => "initial",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub kind: String,
    pub depends_on: Vec<String>,
    pub continue_on_error: bool,
    /// `run_if = "changed"`: skipped when every dependency ended `no_changes` or `skipped`.
    pub run_if_changed: bool,
    pub dirty: bool,
    pub connector: Option<String>,
    pub mode: SyncMode,
    pub force: bool,
    pub entities: Option<Vec<String>>,
    pub resource_types: Option<Vec<String>>,
    pub command: Vec<String>,
    pub timeout: Option<String>,
    pub env: IndexMap<String, String>,
    pub sql: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub format: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Option<String>,
    pub interval: Option<String>,
    pub concurrent: bool,
    pub tasks: Vec<Task>,
    pub line: usize,
}

impl Job {
    /// Whether a task of this job reads `connector`'s export files.
    pub fn synchronizes(&self, connector: &str) -> bool {
        self.tasks.iter().any(|t| {
            (t.kind == "synchronize" || t.kind == "prepare_synchronization")
                && t.connector.as_deref() == Some(connector)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The folder holding `pipeline.toml`; relative paths resolve against it.
    pub dir: PathBuf,
    /// The path of `pipeline.toml` itself, for messages.
    pub file: PathBuf,
    /// First 16 hex digits of the SHA-256 of the file, recorded in `runs.config_hash`.
    pub config_hash: String,
    pub store_uri: Option<String>,
    /// `[store] deletion_vectors`: dirty and incremental tasks patch their tables with Delta
    /// deletion vectors instead of rewriting them (see `crate::store::Patch`).
    pub deletion_vectors: bool,
    pub orders_dir: Option<String>,
    pub connectors: IndexMap<String, Connector>,
    pub entities: Vec<Entity>,
    pub links: Vec<Link>,
    pub jobs: Vec<Job>,
    /// Roles, resource types, classification (sections 5 and 6).
    pub model: RoleModel,
    /// `[notify]` (section 8).
    pub notify: Option<Notify>,
}

/// Where run summaries go (SPEC section 8).
#[derive(Debug, Clone)]
pub struct Notify {
    pub to: Vec<String>,
    pub from: String,
    pub smtp: Option<String>,
}

/// The fewest rows of a table part written on its own ([`Pipeline::parallel_tables`]): below
/// some hundred thousand rows, a second file costs more to open than its encoding saves.
pub const PART_ROWS: usize = 500_000;

impl Pipeline {
    /// The text columns, by table, whose values repeat across many rows: both endpoints of
    /// each link (its table and history), and the owner of the role model's per-owner tables
    /// with `assigned_links`' values (see [`crate::store::Store::with_repeated_columns`]).
    pub fn repeated_columns(&self) -> HashMap<String, Vec<String>> {
        let mut repeated = HashMap::new();
        for l in &self.links {
            let ends = vec![l.from.column.clone(), l.to.column.clone()];
            repeated.insert(format!("{}__history", l.name), ends.clone());
            repeated.insert(l.name.clone(), ends);
        }
        for t in ["assigned_roles", "assigned_scalars"] {
            repeated.insert(t.to_string(), vec!["owner_key".to_string()]);
        }
        repeated.insert(
            "assigned_links".to_string(),
            vec!["owner_key".to_string(), "value".to_string()],
        );
        repeated
    }

    /// The text columns of many distinct values, by table, in no order of their table's
    /// (written without statistics: see [`crate::store::Store::with_unordered_columns`]): the
    /// values of `correlation_keys` (sorted by rule and key), the roles of `assigned_roles`
    /// with their `via`, and the values of `assigned_scalars` and `assigned_links` (each
    /// sorted by owner first).
    pub fn unordered_columns(&self) -> HashMap<String, Vec<String>> {
        let fixed: [(&str, &[&str]); 4] = [
            (crate::tasks::correlation_keys::TABLE, &["value"]),
            ("assigned_roles", &["role", "via"]),
            ("assigned_scalars", &["value"]),
            ("assigned_links", &["value"]),
        ];
        fixed
            .into_iter()
            .map(|(t, c)| (t.to_string(), c.iter().map(|c| c.to_string()).collect()))
            .collect()
    }

    /// The text columns, by table, that a dirty run looks rows up by
    /// or patches ([`crate::store::Store::with_indexed_columns`]): each entity's key, each
    /// link's `from` column, the owner and account keys of the role model's tables, and the
    /// orders' ids.
    pub fn indexed_columns(&self) -> HashMap<String, Vec<String>> {
        let mut indexed: HashMap<String, Vec<String>> = HashMap::new();
        for e in &self.entities {
            indexed.insert(e.name.clone(), vec![e.key.clone()]);
        }
        for l in &self.links {
            indexed.insert(l.name.clone(), vec![l.from.column.clone()]);
        }
        // Not `correlation_keys` (5M rows in no order of `key` at 1M identities): its index
        // is as large as its file, and its lookup runs beside a longer read.
        let fixed: [(&str, &[&str]); 7] = [
            ("correlations", &["owner_key", "account_key"]),
            ("assigned_roles", &["owner_key"]),
            ("classification", &["account_key"]),
            ("assigned_resources", &["owner_key"]),
            ("assigned_scalars", &["owner_key"]),
            ("assigned_links", &["owner_key"]),
            ("provisioning_orders", &["order_id"]),
        ];
        for (table, columns) in fixed {
            indexed.insert(
                table.to_string(),
                columns.iter().map(|c| c.to_string()).collect(),
            );
        }
        indexed
    }

    /// The tables written whole in parallel parts of at least `part_rows` rows each (default
    /// [`PART_ROWS`]; see [`crate::store::Store::with_parallel_tables`]): `correlation_keys`
    /// and the role model's tables, the largest a job writes whole. None is read across its
    /// files in an order a part could break: a scan reads the parts in the order written, each
    /// part has its own key index, and the joins of the role model read them in parallel.
    pub fn parallel_tables(&self, part_rows: Option<usize>) -> HashMap<String, usize> {
        let rows = part_rows.unwrap_or(PART_ROWS);
        [
            crate::tasks::correlation_keys::TABLE,
            "correlations",
            "assigned_roles",
            "assigned_resources",
            "assigned_scalars",
            "assigned_links",
        ]
        .into_iter()
        .map(|t| (t.to_string(), rows))
        .collect()
    }

    /// Reads and validates `PIPELINE/pipeline.toml` (or the file itself when a file is given).
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("pipeline.toml")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            Error::Usage(format!(
                "cannot read pipeline configuration {}: {e} (give the folder that holds pipeline.toml)",
                file.display()
            ))
        })?;
        Self::from_text(&file, &text)
    }

    pub fn from_text(file: &Path, text: &str) -> Result<Self> {
        let raw: raw::RawPipeline = toml::from_str(text).map_err(|e| Error::Config {
            file: file.to_path_buf(),
            problems: vec![ConfigProblem {
                line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
                message: match e.span() {
                    Some(s) => format!(
                        "{} (at `{}`)",
                        e.message().trim(),
                        text[..s.start]
                            .rsplit('\n')
                            .next()
                            .map(|before| {
                                let end = text[s.start..]
                                    .find('\n')
                                    .map_or(text.len(), |n| s.start + n);
                                format!("{before}{}", &text[s.start..end])
                            })
                            .unwrap_or_default()
                            .trim()
                    ),
                    None => e.message().trim().to_string(),
                },
            }],
        })?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        validate::resolve(raw, file, &dir, text)
    }

    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    pub fn connector_entities<'a>(
        &'a self,
        connector: &'a str,
    ) -> impl Iterator<Item = &'a Entity> {
        self.entities
            .iter()
            .filter(move |e| e.connector == connector)
    }

    /// The export folders that do not exist among the connectors `job` synchronizes, with the
    /// line of each `exports`, in the order the connectors are declared.
    pub fn missing_exports(&self, job: &Job) -> Vec<ConfigProblem> {
        self.connectors
            .values()
            .filter(|c| job.synchronizes(&c.name))
            .filter_map(|c| c.exports_missing.clone())
            .collect()
    }

    pub fn connector_links<'a>(&'a self, connector: &'a str) -> impl Iterator<Item = &'a Link> {
        self.links.iter().filter(move |l| l.connector == connector)
    }

    /// Resolves a path written in the pipeline against the pipeline's folder.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_counts_newlines_before_offset() {
        let text = "a\nbb\nccc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 2), 2);
        assert_eq!(line_of(text, 6), 3);
    }
}
