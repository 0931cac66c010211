//! Removing a table's Delta versions before a given one (history anonymization, SPEC
//! section 9): the versions, their log entries (which carry min/max statistics) and the data
//! files only they reference.
//!
//! Order of the steps, so a killed run leaves a readable store and a re-run finishes the work:
//! a checkpoint at the new first version, then the data files no retained version references,
//! then the older log entries. Until the last step the older versions are still listed (they
//! just cannot be read any more); the catalog's `floors` says they are gone.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::Store;
use crate::error::{Error, Result};

/// What one compaction removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compacted {
    pub versions: u64,
    pub files: u64,
}

/// The version a `_delta_log` entry belongs to (`00000000000000000012.json`,
/// `….checkpoint.parquet`, `….crc`), if it is one.
fn log_version(file: &str) -> Option<u64> {
    let digits = file.get(..20)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

impl Store {
    async fn list_meta(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>> {
        self.objects
            .list(Some(&self.object_path(rel)))
            .try_collect()
            .await
            .map_err(|e| Error::store(format!("listing {rel}: {e}")))
    }

    /// Makes `version` the first version of table `name`. Data files that no version from
    /// `version` on references and that were created before `started` (the start of this
    /// anonymization: files of writers running now are newer) are deleted.
    pub async fn compact_before(
        &self,
        name: &str,
        version: u64,
        started: DateTime<Utc>,
    ) -> Result<Compacted> {
        let log_dir = format!("{name}/_delta_log");
        let log = self.list_meta(&log_dir).await?;
        let old: Vec<&object_store::ObjectMeta> = log
            .iter()
            .filter(|m| {
                m.location
                    .filename()
                    .and_then(log_version)
                    .is_some_and(|v| v < version)
            })
            .collect();
        if old.is_empty() {
            return Ok(Compacted::default());
        }
        let versions = old
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".json"))
            .count() as u64;

        // 1. A checkpoint at `version`, so it loads without the older entries.
        let checkpoint = format!("{version:020}.checkpoint.parquet");
        let table = self.delta_at(name, version).await?;
        if !log
            .iter()
            .any(|m| m.location.filename() == Some(checkpoint.as_str()))
        {
            deltalake::checkpoints::create_checkpoint(&table, None).await?;
        }

        // 2. Data files no retained version references.
        // Add paths, relative to the table folder as in the log.
        let mut referenced: HashSet<String> = table
            .snapshot()?
            .log_data()
            .into_iter()
            .map(|add| add.path().to_string())
            .collect();
        for m in &log {
            let Some(v) = m.location.filename().and_then(log_version) else {
                continue;
            };
            if v <= version || !m.location.as_ref().ends_with(".json") {
                continue;
            }
            let bytes = self
                .objects
                .get(&m.location)
                .await
                .map_err(Error::store)?
                .bytes()
                .await
                .map_err(Error::store)?;
            for line in bytes.split(|b| *b == b'\n') {
                let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(p) = action
                    .get("add")
                    .and_then(|a| a.get("path"))
                    .and_then(|p| p.as_str())
                {
                    // Delta writes plain file names (no characters to percent-encode).
                    referenced.insert(p.to_string());
                }
            }
        }
        let table_prefix = self.object_path(name);
        let mut files = 0;
        for m in self.list_meta(name).await? {
            let Some(rel) = m.location.prefix_match(&table_prefix) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            if rel.first().map(String::as_str) == Some("_delta_log") {
                continue;
            }
            let rel = rel.join("/");
            if referenced.contains(&rel) || m.last_modified >= started {
                continue;
            }
            self.objects
                .delete(&m.location)
                .await
                .map_err(|e| Error::store(format!("deleting {}: {e}", m.location)))?;
            files += 1;
        }

        // The key indexes of the data files gone (named after their file, see `key_index`).
        for m in self.list_meta(&format!("_igaflow/keys/{name}")).await? {
            let Some(file) = m.location.filename() else {
                continue;
            };
            let data_file = file
                .find(".parquet.")
                .map(|at| &file[..at + ".parquet".len()]);
            if data_file.is_some_and(|f| referenced.contains(f)) || m.last_modified >= started {
                continue;
            }
            match self.objects.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(format!("deleting {}: {e}", m.location))),
            }
        }

        crate::tasks::failpoint("anonymize.compact");
        // 3. The older log entries (commits, checkpoints, checksums), and what this process
        // keeps of the older versions.
        self.forget_versions_before(name, version);
        for m in old {
            match self.objects.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(format!("deleting {}: {e}", m.location))),
            }
        }
        Ok(Compacted { versions, files })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_versions() {
        assert_eq!(super::log_version("00000000000000000012.json"), Some(12));
        assert_eq!(
            super::log_version("00000000000000000010.checkpoint.parquet"),
            Some(10)
        );
        assert_eq!(super::log_version("_last_checkpoint"), None);
    }

    /// The process keeps the table versions it loaded (`Store::delta_at`); a compaction drops
    /// those it removes, so that a read of one fails rather than finding data files the
    /// compaction deleted.
    #[tokio::test]
    async fn compacted_versions_are_no_longer_kept_loaded() {
        use std::sync::Arc;

        use datafusion::arrow::array::{Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};

        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(dir.path().to_str().unwrap()).unwrap();
        let catalog = store.catalog().await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let mut versions = Vec::new();
        for v in 0..3 {
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![v]))])
                    .unwrap();
            let mode = crate::store::WriteMode::Overwrite;
            let written = store
                .write_table(&catalog, "t", schema.clone(), vec![batch], mode, "run")
                .await
                .unwrap();
            versions.push(written);
        }
        let first = store.delta_at("t", versions[0]).await.unwrap();
        assert_eq!(first.version(), Some(versions[0]));
        // Kept: the same version again, even with its log entry gone.
        let log = dir
            .path()
            .join(format!("t/_delta_log/{:020}.json", versions[0]));
        let entry = std::fs::read(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert!(store.delta_at("t", versions[0]).await.is_ok());
        std::fs::write(&log, entry).unwrap();

        let compacted = store
            .compact_before("t", versions[2], chrono::Utc::now())
            .await
            .unwrap();
        assert_eq!(compacted.versions, 2);
        assert!(
            store.delta_at("t", versions[0]).await.is_err(),
            "a version the compaction removed is no longer loaded"
        );
        let last = store.delta_at("t", versions[2]).await.unwrap();
        assert_eq!(last.version(), Some(versions[2]));
    }
}
