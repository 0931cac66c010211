//! The store: every table is a Delta Lake table under one root (a local folder or any
//! object_store URI), and a small catalog log says which version of each table is committed.
//!
//! # Why a catalog on top of Delta
//!
//! A Delta commit is atomic for one table, but a connector's synchronization moves several
//! tables at once (entities, links, their histories, `recently_modified`). SPEC section 4 asks
//! for all of them or none. So igaflow keeps its own log under `_igaflow/catalog/`: file
//! `<version, 20 digits>.json` lists, for every table, the Delta version that is committed, with
//! the run that committed it. A commit of several tables is:
//!
//! 1. write each table's new state as a new Delta version (each an ordinary atomic Delta commit,
//!    carrying the run id in its commit info) — nobody reading through igaflow sees it yet;
//! 2. create the next catalog file with put-if-absent (atomic on a local disk and on S3).
//!
//! Readers (`igaflow sql`, every task) open each table at the version the latest catalog file
//! names, never at Delta's latest. A process killed during step 1 leaves Delta versions that no
//! catalog names: readers ignore them, and the next write of such a table starts from the
//! committed version again (an overwrite computes the whole new state from committed inputs; an
//! append first rewrites the table as committed content plus the new rows), so a re-run
//! converges to exactly the state an uninterrupted run reaches. A process killed after step 2
//! has committed. Other Delta readers (DuckDB, Spark) see Delta's latest version; between a crash
//! and the next run that can include uncommitted work, which the next write replaces.
//!
//! The catalog also keeps what is not a table: connectors blocked by a threshold, and the run
//! whose end each version marks (for `--as-of RUN_ID`).

mod catalog;
mod compact;
mod key_index;
mod patch;
mod patched_scan;
mod write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::ObjectStore;
use url::Url;

pub use catalog::{BlockedConnector, Catalog, CatalogChange, Staged};
pub use patch::Patch;
pub(crate) use write::nullable as stored_schema;
pub use write::{BatchMap, Rows, WriteMode};

use crate::error::{Error, Result};

pub struct Store {
    root: Url,
    objects: Arc<dyn ObjectStore>,
    /// Path of the store root inside `objects` (empty for a local folder store).
    prefix: object_store::path::Path,
    storage_options: HashMap<String, String>,
    /// Serializes the commits of this process's concurrent tasks (see [`Store::lock_commits`]).
    commits: tokio::sync::Mutex<()>,
    /// Text columns, by table, whose values repeat across many rows (see
    /// [`Store::with_repeated_columns`]).
    repeated: HashMap<String, Vec<String>>,
    /// The data files (with their deleted rows) of committed table versions that key lookups
    /// read ([`Store::rows_of_keys`]): a committed version never changes, and a dirty task
    /// looks several tables up more than once, each open of a Delta table replaying its log.
    versions: std::sync::Mutex<HashMap<(String, u64), VersionFiles>>,
    /// The key values that the patches this process committed left in none of a table
    /// version's older files ([`patch::Cleared`]), by table and version.
    cleared: std::sync::Mutex<HashMap<(String, u64), Arc<patch::Cleared>>>,
    /// Committed table versions as loaded ([`Store::delta_at`]): every task of a run opens a
    /// session of all the tables, and a version never changes, so each log is replayed once
    /// per process rather than once per task.
    loaded: std::sync::Mutex<HashMap<(String, u64), DeltaTable>>,
    /// The rows key lookups found ([`Store::rows_of_keys`]), for a task that looks the same
    /// keys up in the same version again (the orders of a dirty run read the accounts and
    /// owners the role model read).
    found: std::sync::Mutex<Vec<patch::Found>>,
    /// Text columns, by table, whose data files get a key index ([`key_index`]) when the
    /// table is written whole (see [`Store::with_indexed_columns`]).
    indexed: HashMap<String, Vec<String>>,
    /// Key indexes loaded (`None`: the file has none), by path.
    indexes: std::sync::Mutex<HashMap<object_store::path::Path, Option<Arc<key_index::KeyIndex>>>>,
    /// Tables written whole in parallel parts, with the fewest rows a part may have (see
    /// [`Store::with_parallel_tables`]).
    parallel: HashMap<String, usize>,
    /// Text columns, by table, written without statistics (see
    /// [`Store::with_unordered_columns`]).
    unordered: HashMap<String, Vec<String>>,
}

/// A committed table version's data files, `None` when they cannot be read by position.
type VersionFiles = Option<Arc<Vec<patch::DataFile>>>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.root)
    }
}

/// The dictionary page limit of the columns [`Store::with_repeated_columns`] names.
pub const REPEATED_DICTIONARY_BYTES: usize = 16 * 1024 * 1024;

impl Store {
    /// Opens (creating a local folder if needed) the store at a path or URI.
    pub fn open(uri: &str) -> Result<Self> {
        let is_url = uri.contains("://");
        if is_url && !uri.starts_with("file://") {
            let mut root =
                Url::parse(uri).map_err(|e| Error::Usage(format!("store URI `{uri}`: {e}")))?;
            if !root.path().ends_with('/') {
                root.set_path(&format!("{}/", root.path()));
            }
            let storage_options: HashMap<String, String> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_")
                })
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            register_cloud_handlers();
            let (objects, prefix) = object_store::parse_url_opts(&root, storage_options.clone())
                .map_err(|e| Error::Usage(format!("store URI `{uri}`: {e}")))?;
            return Ok(Self {
                root,
                objects: Arc::from(objects),
                prefix,
                storage_options,
                commits: Default::default(),
                repeated: HashMap::new(),
                versions: Default::default(),
                cleared: Default::default(),
                loaded: Default::default(),
                found: Default::default(),
                indexed: HashMap::new(),
                indexes: Default::default(),
                parallel: HashMap::new(),
                unordered: HashMap::new(),
            });
        }
        let path = match uri.strip_prefix("file://") {
            Some(p) => Path::new(p).to_path_buf(),
            None => Path::new(uri).to_path_buf(),
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("cannot create store folder {}", path.display()), e))?;
        let abs = std::fs::canonicalize(&path)
            .map_err(|e| Error::io(format!("cannot open store folder {}", path.display()), e))?;
        let root = Url::from_directory_path(&abs)
            .map_err(|_| Error::Usage(format!("store path {} is not absolute", abs.display())))?;
        let objects =
            object_store::local::LocalFileSystem::new_with_prefix(&abs).map_err(Error::store)?;
        Ok(Self {
            root,
            objects: Arc::new(objects),
            prefix: object_store::path::Path::default(),
            storage_options: HashMap::new(),
            commits: Default::default(),
            repeated: HashMap::new(),
            versions: Default::default(),
            cleared: Default::default(),
            loaded: Default::default(),
            found: Default::default(),
            indexed: HashMap::new(),
            indexes: Default::default(),
            parallel: HashMap::new(),
            unordered: HashMap::new(),
        })
    }

    /// The store, writing the text columns `repeated` names (table → columns) with a
    /// dictionary of up to [`REPEATED_DICTIONARY_BYTES`] per row group. Parquet's default of
    /// 1 MiB overflows on a link table's endpoints (at 1M identities, 85K account DNs per row
    /// group of `ad_member_of`), and the column falls back to plain values: 1,086 MB of DNs
    /// to decode where a dictionary holds 115 MB. Columns of unique values keep the default:
    /// a dictionary of them only grows the file.
    pub fn with_repeated_columns(mut self, repeated: HashMap<String, Vec<String>>) -> Self {
        self.repeated = repeated;
        self
    }

    /// The store, indexing the text columns `indexed` names (table → columns) in each data
    /// file of a table written whole ([`key_index`]): the columns the key lookups of a dirty
    /// run read ([`Store::rows_of_keys`]).
    pub fn with_indexed_columns(mut self, indexed: HashMap<String, Vec<String>>) -> Self {
        self.indexed = indexed;
        self
    }

    /// The store, writing each table `parallel` names (table → fewest rows per part) whole as
    /// one data file per core, each encoded on its own, when it has rows enough for two parts.
    /// delta-rs encodes a data file's columns one after the other: at 1M identities the 5.3M
    /// rows of `correlation_keys` took a second on one core. Each part is a Delta version of
    /// its own: the last part overwrites the table, the others are appended from the last but
    /// one to the first, so that a scan (which lists the newest version's files first) reads
    /// the rows in the order written. Each part's file gets its own key indexes. The catalog
    /// names none of these versions until the caller commits it.
    pub fn with_parallel_tables(mut self, parallel: HashMap<String, usize>) -> Self {
        self.parallel = parallel;
        self
    }

    /// The store, writing the text columns `unordered` names (table → columns) without
    /// min/max statistics. Where a column's values follow no order of its table's (a desired
    /// value, sorted by owner), each page and row group holds values from all over the range,
    /// so its bounds prune no read, and they cost two comparisons per value to write: at 1M
    /// identities 0.2–0.3 s of the role model's commit.
    pub fn with_unordered_columns(mut self, unordered: HashMap<String, Vec<String>>) -> Self {
        self.unordered = unordered;
        self
    }

    /// Held while a task writes its tables and commits them. Tasks of one run may run at the
    /// same time and share tables (`recently_modified`, `rejected_rows`); under this lock each
    /// writes on top of the latest committed state, so no commit is lost or refused.
    pub async fn lock_commits(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commits.lock().await
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The local folder of the store, when it is one.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        (self.root.scheme() == "file")
            .then(|| self.root.to_file_path().ok())
            .flatten()
    }

    pub fn table_url(&self, name: &str) -> Url {
        self.root
            .join(&format!("{name}/"))
            .expect("invariant: table names are plain identifiers")
    }

    /// Writes a file under the store root (e.g. `_orders/<run>/<connector>.json`); a single
    /// put, so readers see the whole file or none.
    pub async fn put_file(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        use object_store::ObjectStoreExt;
        self.objects
            .put(&self.object_path(rel), bytes.into())
            .await
            .map_err(|e| Error::store(format!("writing {rel}: {e}")))?;
        Ok(())
    }

    /// Creates a file under the store root unless it exists (atomic put-if-absent); false when
    /// it already exists.
    pub async fn create_file(&self, rel: &str, bytes: Vec<u8>) -> Result<bool> {
        use object_store::{PutMode, PutOptions};
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(&self.object_path(rel), bytes.into(), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::store(format!("creating {rel}: {e}"))),
        }
    }

    /// Reads a file under the store root, if it exists.
    pub async fn read_file(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        use object_store::ObjectStoreExt;
        match self.objects.get(&self.object_path(rel)).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| Error::store(format!("reading {rel}: {e}")))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(format!("reading {rel}: {e}"))),
        }
    }

    /// Paths (relative to the store root) of the files under `prefix`.
    pub async fn list_files(&self, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let root = self.object_path("");
        let metas: Vec<_> = self
            .objects
            .list(Some(&self.object_path(prefix.trim_end_matches('/'))))
            .try_collect()
            .await
            .map_err(|e| Error::store(format!("listing {prefix}: {e}")))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let p = m.location.as_ref();
                p.strip_prefix(root.as_ref())
                    .map(|r| r.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| p.to_string())
            })
            .collect())
    }

    /// Deletes a file under the store root (absent is fine).
    pub async fn delete_file(&self, rel: &str) -> Result<()> {
        use object_store::ObjectStoreExt;
        match self.objects.delete(&self.object_path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(format!("deleting {rel}: {e}"))),
        }
    }

    fn object_path(&self, rel: &str) -> object_store::path::Path {
        if self.prefix.as_ref().is_empty() {
            object_store::path::Path::from(rel)
        } else {
            object_store::path::Path::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    /// The Delta table `name` at a given version, loaded once per process.
    pub async fn delta_at(&self, name: &str, version: u64) -> Result<DeltaTable> {
        let id = (name.to_string(), version);
        if let Some(table) = self.loaded.lock().expect("not poisoned").get(&id) {
            return Ok(table.clone());
        }
        let table = DeltaTableBuilder::from_url(self.table_url(name))?
            .with_storage_options(self.storage_options.clone())
            .with_version(version)
            .load()
            .await?;
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(id, table.clone());
        Ok(table)
    }

    /// The Delta table `name` at its latest version (committed or not), or an empty handle.
    pub async fn delta_latest(&self, name: &str) -> Result<DeltaTable> {
        if self.root.scheme() == "file" {
            // delta-rs refuses a local location that does not exist yet.
            if let Ok(dir) = self.table_url(name).to_file_path() {
                std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                })?;
            }
        }
        let mut table = DeltaTableBuilder::from_url(self.table_url(name))?
            .with_storage_options(self.storage_options.clone())
            .build()?;
        // Only load a table whose log exists: delta-rs logs an error for an empty location.
        let log = self.object_path(&format!("{name}/_delta_log/"));
        let mut listing = self.objects.list(Some(&log));
        if futures::StreamExt::next(&mut listing).await.is_some() {
            table.load().await?;
        }
        Ok(table)
    }

    /// Drops what this process keeps of the versions of `name` before `version` (loaded
    /// tables, data files, cleared keys): a compaction has removed them.
    fn forget_versions_before(&self, name: &str, version: u64) {
        let older = |(table, v): &(String, u64)| table == name && *v < version;
        let lock = "not poisoned";
        self.loaded.lock().expect(lock).retain(|id, _| !older(id));
        self.versions.lock().expect(lock).retain(|id, _| !older(id));
        self.cleared.lock().expect(lock).retain(|id, _| !older(id));
        self.found
            .lock()
            .expect(lock)
            .retain(|f| !f.older(name, version));
    }

    /// A DataFusion provider for the committed version of `name`, if the table exists.
    pub async fn provider(
        &self,
        ctx: &SessionContext,
        catalog: &Catalog,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(&version) = catalog.tables.get(name) else {
            return Ok(None);
        };
        let table = self.delta_at(name, version).await?;
        table.update_datafusion_session(&ctx.state())?;
        // With the session, the scan takes its settings: strings read as `Utf8` (the session's
        // `schema_force_view_types = false`), the type freshly loaded exports have. Without
        // it, delta-rs reads them as `Utf8View`, and every comparison with loaded data and
        // every write back casts them.
        let provider = table
            .table_provider()
            .with_session(Arc::new(ctx.state()))
            .await
            .map_err(Error::Engine)?;
        // A version that patches left with deletion vectors: read with them as row selections
        // (see `patched_scan`), keeping the Parquet scan's pruning.
        if let Some(patched) = self
            .patched_table(ctx, name, &table, provider.schema())
            .await?
        {
            return Ok(Some(Arc::new(patched)));
        }
        Ok(Some(provider))
    }

    /// Registers every committed table of `catalog` in `ctx` under its name. The tables are
    /// loaded together: each load reads its Delta log, and a session of a store of twenty
    /// tables took 20–30 ms loading them one after the other (every task opens one).
    pub async fn register_all(&self, ctx: &SessionContext, catalog: &Catalog) -> Result<()> {
        let loads = catalog.tables.keys().map(|name| async move {
            Ok::<_, Error>((name, self.provider(ctx, catalog, name).await?))
        });
        for (name, provider) in futures::future::try_join_all(loads).await? {
            install(ctx, name, provider)?;
        }
        Ok(())
    }

    /// Registers (or re-registers) one committed table; false when it does not exist.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        catalog: &Catalog,
        name: &str,
    ) -> Result<bool> {
        let provider = self.provider(ctx, catalog, name).await?;
        install(ctx, name, provider)
    }
}

/// Registers `provider` in `ctx` as `name` in place of what was registered under that name;
/// with `None`, leaves the name unregistered. True when a table is registered.
/// The app metadata of every Delta commit igaflow makes: the run that made it.
fn run_metadata(run_id: &str) -> HashMap<String, serde_json::Value> {
    [(
        "igaflow_run_id".to_string(),
        serde_json::Value::from(run_id),
    )]
    .into()
}

fn install(
    ctx: &SessionContext,
    name: &str,
    provider: Option<Arc<dyn TableProvider>>,
) -> Result<bool> {
    let _ = ctx.deregister_table(name)?;
    match provider {
        Some(p) => {
            ctx.register_table(name, p)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(feature = "s3")]
fn register_cloud_handlers() {
    deltalake::aws::register_handlers(None);
}

#[cfg(not(feature = "s3"))]
fn register_cloud_handlers() {}
