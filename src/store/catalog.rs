//! The catalog log: `_igaflow/catalog/<version>.json`, one file per store commit.
//!
//! Each file is the whole committed state (table → Delta version, blocked connectors), so a
//! reader needs only the newest one; older ones serve `--as-of RUN_ID`. Files are created with
//! put-if-absent: two writers racing for the same version cannot both win.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Error, Result};

const CATALOG_DIR: &str = "_igaflow/catalog";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockedConnector {
    pub run_id: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Catalog version; 0 = the empty store (no file yet).
    pub version: u64,
    pub run_id: Option<String>,
    pub committed_at: Option<String>,
    /// What this commit was: `sync:<connector>`, `run_end`, `prepare:<connector>`…
    pub what: Option<String>,
    pub tables: BTreeMap<String, u64>,
    #[serde(default)]
    pub blocked: BTreeMap<String, BlockedConnector>,
    /// Connectors whose staging tables were written by `prepare_synchronization`, with the run
    /// and mode that wrote them; `synchronize` in the same run and mode applies them.
    #[serde(default)]
    pub staged: BTreeMap<String, Staged>,
    /// Tables whose Delta versions before the given one were removed because they held
    /// personal data of an anonymized owner (SPEC section 9); older catalogs still name them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub floors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Staged {
    pub run_id: String,
    pub mode: String,
    /// Per entity, the keys of its rejected lines whose stored rows the synchronization holds
    /// (a complete export's bad line is not a deletion): `rejected_rows` keeps no parsed key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, Vec<String>>,
}

/// The changes one commit makes to the catalog.
#[derive(Debug, Default)]
pub struct CatalogChange {
    pub run_id: String,
    pub what: String,
    pub tables: BTreeMap<String, u64>,
    pub block: BTreeMap<String, BlockedConnector>,
    pub unblock: Vec<String>,
    pub staged: BTreeMap<String, Staged>,
    pub floors: BTreeMap<String, u64>,
}

fn file_name(version: u64) -> String {
    format!("{CATALOG_DIR}/{version:020}.json")
}

impl Store {
    async fn catalog_versions(&self) -> Result<Vec<u64>> {
        let prefix = self.object_path(CATALOG_DIR);
        let metas: Vec<_> = self
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(Error::store)?;
        let mut versions: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".json"))
            .filter_map(|v| v.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn read_catalog(&self, version: u64) -> Result<Catalog> {
        let path = self.object_path(&file_name(version));
        let bytes = self
            .objects
            .get(&path)
            .await
            .map_err(Error::store)?
            .bytes()
            .await
            .map_err(Error::store)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::store(format!("catalog file {path} is not valid: {e}")))
    }

    /// The committed state: the newest catalog file, or an empty catalog for a new store.
    pub async fn catalog(&self) -> Result<Catalog> {
        match self.catalog_versions().await?.last() {
            Some(&v) => self.read_catalog(v).await,
            None => Ok(Catalog::default()),
        }
    }

    /// The newest catalog for which `wanted` holds.
    async fn newest_where(&self, wanted: impl Fn(&Catalog) -> bool) -> Result<Option<Catalog>> {
        for v in self.catalog_versions().await?.into_iter().rev() {
            let c = self.read_catalog(v).await?;
            if wanted(&c) {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The state when run `run_id` ended (its `run_end` commit).
    pub async fn catalog_as_of_run(&self, run_id: &str) -> Result<Catalog> {
        self.newest_where(|c| {
            c.run_id.as_deref() == Some(run_id) && c.what.as_deref() == Some("run_end")
        })
        .await?
        .ok_or_else(|| {
            Error::Usage(format!(
                "--as-of {run_id}: no finished run with this id in the store (see `igaflow runs`)"
            ))
        })
    }

    /// The state at `time`: the newest catalog committed at or before it (`None` before the
    /// first commit).
    pub async fn catalog_at(&self, time: chrono::DateTime<chrono::Utc>) -> Result<Option<Catalog>> {
        self.newest_where(|c| {
            c.committed_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|at| at <= time)
        })
        .await
    }

    /// Atomically publishes `change` on top of the newest catalog.
    ///
    /// When another process committed in between, the change is re-applied on its state unless
    /// that commit moved one of the same tables (then the caller's Delta versions are stale and
    /// the commit fails; nothing of it is visible and a re-run converges).
    pub async fn commit(&self, base: &Catalog, change: CatalogChange) -> Result<Catalog> {
        let mut base = base.clone();
        loop {
            let mut next = base.clone();
            next.version = base.version + 1;
            next.run_id = Some(change.run_id.clone());
            next.committed_at =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            next.what = Some(change.what.clone());
            for (t, v) in &change.tables {
                next.tables.insert(t.clone(), *v);
            }
            for (c, b) in &change.block {
                next.blocked.insert(c.clone(), b.clone());
            }
            for c in &change.unblock {
                next.blocked.remove(c);
            }
            for (c, s) in &change.staged {
                next.staged.insert(c.clone(), s.clone());
            }
            for (t, v) in &change.floors {
                next.floors.insert(t.clone(), *v);
            }
            let body = serde_json::to_vec_pretty(&next).expect("invariant: catalog serializes");
            let path = self.object_path(&file_name(next.version));
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .objects
                .put_opts(&path, PutPayload::from(body), opts)
                .await
            {
                Ok(_) => return Ok(next),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let latest = self.catalog().await?;
                    let clash = change
                        .tables
                        .keys()
                        .any(|t| latest.tables.get(t) != base.tables.get(t));
                    if clash {
                        return Err(Error::Conflict(format!(
                            "store: another process committed to the same tables while this run was writing ({}); nothing of this commit is visible — re-run it",
                            change.what
                        )));
                    }
                    base = latest;
                }
                Err(e) => return Err(Error::store(e)),
            }
        }
    }
}
