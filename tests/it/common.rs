//! Shared helpers: a temporary pipeline folder, the igaflow binary, and reading tables back
//! through `igaflow sql`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// What one igaflow invocation printed and how it ended.
#[derive(Debug)]
pub struct Out {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the igaflow binary with `args` and extra environment variables.
pub fn igaflow(args: &[&str], envs: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_igaflow"));
    cmd.args(args)
        .env_remove("IGAFLOW_STORE")
        .env_remove("IGAFLOW_FAILPOINT")
        .env_remove("CONTOSO_DAY")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the igaflow binary runs");
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A temporary folder holding a pipeline, its exports and its store.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A new environment with `pipeline` and a copy of `base`'s store.
    pub fn copy_of(base: &Env, pipeline: &str) -> Self {
        let env = Env::new();
        env.write_pipeline(pipeline);
        copy_dir(&base.path("store"), &env.path("store"));
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> String {
        self.path("store").to_string_lossy().into_owned()
    }

    pub fn pipeline(&self) -> String {
        self.path("pipeline").to_string_lossy().into_owned()
    }

    /// Writes `content` to `rel` (creating folders).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Writes `pipeline/pipeline.toml`.
    pub fn write_pipeline(&self, toml: &str) {
        self.write("pipeline/pipeline.toml", toml);
    }

    /// `igaflow run pipeline --job JOB --store store EXTRA…`
    pub fn run(&self, job: &str, extra: &[&str], envs: &[(&str, &str)]) -> Out {
        let pipeline = self.pipeline();
        let store = self.store();
        let mut args = vec![
            "run",
            pipeline.as_str(),
            "--job",
            job,
            "--store",
            store.as_str(),
        ];
        args.extend_from_slice(extra);
        igaflow(&args, envs)
    }

    /// Rows of a query as strings (CSV output parsed back; NULL reads as "").
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        query(&self.store(), sql)
    }

    pub fn scalar(&self, sql: &str) -> String {
        let rows = self.query(sql);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].clone()
    }
}

pub fn query(store: &str, sql: &str) -> Vec<Vec<String>> {
    query_with_header(store, sql).1
}

/// Columns of a CSV query result, with the header.
pub fn query_with_header(store: &str, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let out = igaflow(&["sql", "--store", store, "--format", "csv", sql], &[]);
    out.expect_code(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(out.stdout.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Every row of `tables`, sorted, as text. With `normalize`, columns that depend on the run
/// (run ids, timestamps) are dropped and `_valid_to` is reduced to open/closed, so two runs of
/// the same work compare equal.
pub fn snapshot(store: &str, tables: &[&str], normalize: bool) -> BTreeMap<String, Vec<String>> {
    let mut snap = BTreeMap::new();
    for t in tables {
        let (header, rows) = query_with_header(store, &format!("select * from {t}"));
        let mut lines: Vec<String> = rows
            .into_iter()
            .map(|row| {
                header
                    .iter()
                    .zip(row)
                    .filter_map(|(h, v)| match (normalize, h.as_str()) {
                        (true, "_run_id" | "run_id" | "_valid_from") => None,
                        (true, "_valid_to") => Some(format!("{h}={}", !v.is_empty())),
                        _ => Some(format!("{h}={v}")),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        lines.sort();
        snap.insert(t.to_string(), lines);
    }
    snap
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The contoso pipeline with its dataset paths made absolute, so a copy can live anywhere.
pub fn contoso_pipeline_text() -> String {
    let text = std::fs::read_to_string(repo().join("pipelines/contoso/pipeline.toml")).unwrap();
    let datasets = repo().join("datasets");
    text.replace("../../datasets", &datasets.to_string_lossy())
}

/// The run id printed on the first line of a run report ("run <id> · job …").
pub fn run_id_of(out: &Out) -> String {
    out.stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in {out:?}"))
        .to_string()
}

/// A one-connector pipeline: `hr` exports `persons.csv` from `exports/hr`, with jobs
/// `complete`, `incremental`, `initial` and `forced`. `entity_extra` goes into the entity.
pub fn hr_pipeline(entity_extra: &str) -> String {
    format!(
        r#"name = "testhr"

[connector.hr]
exports = "../exports/hr"

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "employee_id"
{entity_extra}
[entity.columns]
employee_id = "string"
name = "string"
birth_date = "date"
level = "int"
note = "string"

[[job]]
name = "complete"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "complete"

[[job]]
name = "incremental"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "incremental"

[[job]]
name = "initial"
[[job.task]]
name = "load_hr"
type = "synchronize"
connector = "hr"
mode = "initial"
"#
    )
}

pub const HR_HEADER: &str = "employee_id,name,birth_date,level,note\n";

/// `n` persons with keys `E00001`… in a CSV body (with header).
pub fn persons_csv(ids: impl Iterator<Item = usize>) -> String {
    let mut s = String::from(HR_HEADER);
    for i in ids {
        s.push_str(&format!(
            "E{i:05},Person {i},1980-01-{:02},{},\n",
            i % 28 + 1,
            i % 5
        ));
    }
    s
}

/// The actions of each Delta commit of `table` in the test's store, oldest first.
pub fn delta_commits(env: &Env, table: &str) -> Vec<Vec<serde_json::Value>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(env.path(&format!("store/{table}/_delta_log")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    logs.sort();
    logs.iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

/// Whether a Delta commit adds a file with a deletion vector (an igaflow patch).
pub fn is_patch(commit: &[serde_json::Value]) -> bool {
    commit
        .iter()
        .any(|a| a["add"]["deletionVector"].is_object())
}

/// Whether a Delta commit removes a file that had a deletion vector without being a patch
/// (a patched table rewritten whole).
pub fn rewrites_patched(commit: &[serde_json::Value]) -> bool {
    !is_patch(commit)
        && commit
            .iter()
            .any(|a| a["remove"]["deletionVector"].is_object())
}

/// The rows of the latest version of `table`, as its files store them (in the order its last
/// commit added them): `columns` of each row, as text.
pub fn stored_rows(env: &Env, table: &str, columns: &[&str]) -> Vec<Vec<String>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let commits = delta_commits(env, table);
    let last = commits.last().expect("the table has commits");
    let mut rows = Vec::new();
    for add in last.iter().filter_map(|a| a["add"]["path"].as_str()) {
        let file = std::fs::File::open(env.path(&format!("store/{table}/{add}"))).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let shown: Vec<_> = columns
                .iter()
                .map(|c| {
                    let column = batch.column(batch.schema().index_of(c).unwrap()).clone();
                    (column, FormatOptions::default())
                })
                .collect();
            let formatters: Vec<_> = shown
                .iter()
                .map(|(c, o)| ArrayFormatter::try_new(c.as_ref(), o).unwrap())
                .collect();
            for i in 0..batch.num_rows() {
                rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
    }
    rows
}
