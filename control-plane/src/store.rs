//! The durable store: every piece of control-plane state that must survive a restart,
//! in one redb file (pure Rust, ACID, no server). A write returns only after its
//! transaction is committed (fsync'd), so whatever the REST API acknowledged is on disk.
//!
//! Owns the file and its tables; knows nothing of HTTP or gRPC. Values are protobuf
//! (`presage.mesh.v1` resources) or opaque bytes chosen by the caller.
//!
//! Tables:
//! - `resources`: `"{type_url}/{name}"` -> encoded `Resource` (clusters, routes, QoS profiles, ...)
//! - `series`: service name -> encoded load history (see `load::History::encode`)
//! - `models`: model name -> encoded model state (`behaviour`: the behaviour profiler)
//! - `secrets`: name -> bytes (`identity-ca`: a generated mesh CA's certificate and key)

use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use presage_api::Resource;

const RESOURCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("resources");
const SERIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("series");
const MODELS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("models");
const SECRETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("secrets");
/// Manual dependency edges (JSON) by `from -> to`.
const DEPENDENCIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dependencies");
/// Scaling decisions by sequence number (JSON), the newest `DECISIONS_KEPT`.
const DECISIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("decisions");
const DECISIONS_KEPT: u64 = 100_000;
/// Ended workflow runs by request id: expiry (Unix ms, 8 bytes little-endian) then the
/// `RequestRecord` (protobuf); and the same runs by expiry, for purging.
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("workflow_runs");
const RUNS_BY_EXPIRY: TableDefinition<'_, (u64, &str), ()> =
    TableDefinition::new("workflow_runs_by_expiry");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("store: {0}")]
    Io(#[from] redb::Error),
    #[error("store: corrupt record {key}: {source}")]
    Decode {
        key: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// Cheap to clone; every clone uses the same file.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn key(type_url: &str, name: &str) -> String {
    format!("{type_url}/{name}")
}

impl Store {
    /// Opens the store at `path`, creating it (and its directory) if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open = || -> Result<Database, redb::Error> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(redb::Error::from)?;
            }
            let db = Database::create(path)?;
            // Owner only: the store holds the mesh CA's private key (`secrets`), with
            // which anyone who reads it could mint any workload identity.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(redb::Error::from)?;
            // Create every table up front so readers never meet a missing one.
            let tx = db.begin_write()?;
            tx.open_table(RESOURCES)?;
            tx.open_table(SERIES)?;
            tx.open_table(MODELS)?;
            tx.open_table(SECRETS)?;
            tx.open_table(DECISIONS)?;
            tx.open_table(DEPENDENCIES)?;
            tx.open_table(RUNS)?;
            tx.open_table(RUNS_BY_EXPIRY)?;
            tx.commit()?;
            Ok(db)
        };
        let db = open().map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Writes (or overwrites) one resource, durably.
    pub fn put(&self, resource: &Resource) -> Result<(), StoreError> {
        self.put_many(std::slice::from_ref(resource))
    }

    /// Writes several resources in one transaction (one fsync): all or none.
    pub fn put_many(&self, resources: &[Resource]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(RESOURCES).map_err(redb::Error::from)?;
            for resource in resources {
                let Some(body) = &resource.body else {
                    continue;
                };
                let k = key(body.type_url(), &resource.name);
                t.insert(k.as_str(), resource.encode_to_vec().as_slice())
                    .map_err(redb::Error::from)?;
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Deletes one resource, durably. Returns whether it existed.
    pub fn delete(&self, type_url: &str, name: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let existed = {
            let mut t = tx.open_table(RESOURCES).map_err(redb::Error::from)?;
            let removed = t
                .remove(key(type_url, name).as_str())
                .map_err(redb::Error::from)?;
            removed.is_some()
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(existed)
    }

    /// Every stored resource, of every type.
    pub fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(RESOURCES).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            let r = Resource::decode(v.value()).map_err(|source| StoreError::Decode {
                key: k.value().to_string(),
                source,
            })?;
            out.push(r);
        }
        Ok(out)
    }

    /// Saves the load histories of several services in one transaction.
    pub fn put_series(&self, items: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(SERIES).map_err(redb::Error::from)?;
            for (name, bytes) in items {
                t.insert(name.as_str(), bytes.as_slice())
                    .map_err(redb::Error::from)?;
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Saves one model's state, replacing the previous one.
    pub fn put_model(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(MODELS, name, bytes)
    }

    /// One model's saved state, if any.
    pub fn model(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(MODELS, name)
    }

    /// Saves a secret (the file is the store's: readable by whoever can read the store).
    pub fn put_secret(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(SECRETS, name, bytes)
    }

    fn put_bytes(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(table).map_err(redb::Error::from)?;
            t.insert(name, bytes).map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(SECRETS, name)
    }

    fn get(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(table).map_err(redb::Error::from)?;
        let v = t.get(name).map_err(redb::Error::from)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// Saves one manual dependency edge, replacing the previous one.
    pub fn put_dependency(&self, key: &str, json: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(DEPENDENCIES, key, json)
    }

    /// Forgets one manual dependency edge; whether it was there.
    pub fn delete_dependency(&self, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let had = {
            let mut t = tx.open_table(DEPENDENCIES).map_err(redb::Error::from)?;
            let had = t.remove(key).map_err(redb::Error::from)?.is_some();
            had
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(had)
    }

    /// Every manual dependency edge.
    pub fn dependencies(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.all(DEPENDENCIES)
    }

    /// Every saved load history.
    pub fn series(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.all(SERIES)
    }

    fn all(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(table).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Appends a decision record under `seq` (above every earlier one) and forgets the
    /// oldest beyond the kept number.
    pub fn put_decision(&self, seq: u64, json: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(DECISIONS).map_err(redb::Error::from)?;
            t.insert(seq, json).map_err(redb::Error::from)?;
            if seq >= DECISIONS_KEPT {
                t.retain_in(..seq - DECISIONS_KEPT, |_, _| false)
                    .map_err(redb::Error::from)?;
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// The highest decision sequence number stored (0: none).
    pub fn last_decision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(DECISIONS).map_err(redb::Error::from)?;
        let last = t
            .last()
            .map_err(redb::Error::from)?
            .map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Keeps ended workflow runs, each until its expiry (Unix ms), and forgets those
    /// expired by `now_ms`.
    pub fn put_runs(
        &self,
        runs: &[(presage_api::RequestRecord, u64)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        use prost::Message as _;
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut by_id = tx.open_table(RUNS).map_err(redb::Error::from)?;
            let mut by_expiry = tx.open_table(RUNS_BY_EXPIRY).map_err(redb::Error::from)?;
            for (r, expires) in runs {
                let mut v = expires.to_le_bytes().to_vec();
                r.encode(&mut v).expect("a Vec grows");
                by_id
                    .insert(r.request_id.as_str(), v.as_slice())
                    .map_err(redb::Error::from)?;
                by_expiry
                    .insert((*expires, r.request_id.as_str()), ())
                    .map_err(redb::Error::from)?;
            }
            let mut expired = Vec::new();
            for item in by_expiry.range(..(now_ms, "")).map_err(redb::Error::from)? {
                let (k, _) = item.map_err(redb::Error::from)?;
                let (at, id) = k.value();
                expired.push((at, id.to_string()));
            }
            for (at, id) in expired {
                by_expiry
                    .remove((at, id.as_str()))
                    .map_err(redb::Error::from)?;
                // Only if not written again since with a later expiry.
                let same = by_id
                    .get(id.as_str())
                    .map_err(redb::Error::from)?
                    .is_some_and(|v| v.value().get(..8) == Some(&at.to_le_bytes()[..]));
                if same {
                    by_id.remove(id.as_str()).map_err(redb::Error::from)?;
                }
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// An ended workflow run kept until after `now_ms`.
    pub fn run(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<presage_api::RequestRecord>, StoreError> {
        use prost::Message as _;
        let Some(v) = self.get(RUNS, id)? else {
            return Ok(None);
        };
        let expires = v
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if expires <= now_ms {
            return Ok(None);
        }
        presage_api::RequestRecord::decode(&v[8..])
            .map(Some)
            .map_err(|source| StoreError::Decode {
                key: format!("workflow run {id}"),
                source,
            })
    }

    /// Decision records, newest first, for which `keep` is true, at most `limit`.
    pub fn decisions(
        &self,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(DECISIONS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(redb::Error::from)?;
            if keep(v.value()) {
                out.push(v.value().to_vec());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("presage-store-mode-{}", std::process::id()));
        let path = dir.join("cp.redb");
        Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
