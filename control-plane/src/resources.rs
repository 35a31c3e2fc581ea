//! The resources the control plane serves (clusters, routes, QoS profiles, ...): the
//! durable copy in the store and an in-memory snapshot that discovery streams watch.
//!
//! A write goes to the store first and reaches the snapshot only once committed, so a
//! proxy never sees a resource that a crash could lose. Every change publishes a new
//! `Arc<Snapshot>` on a `watch` channel; streams diff it against what their proxy has.

use std::collections::BTreeMap;
use std::sync::Arc;

use presage_api::{content_version, types, Resource};
use tokio::sync::{watch, Mutex};

use crate::store::{Store, StoreError};

/// Every resource of one type and the type's version.
#[derive(Debug, Default, Clone)]
pub struct TypeState {
    /// Changes whenever any resource of the type changes (a hash of names and versions).
    pub version: String,
    pub items: BTreeMap<String, Resource>,
}

/// An immutable view of every resource, swapped whole on each change.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub types: BTreeMap<&'static str, Arc<TypeState>>,
}

impl Snapshot {
    pub fn get(&self, type_url: &str) -> Option<&TypeState> {
        self.types.get(type_url).map(|s| &**s)
    }
}

/// Static `type_url` for a name from the wire, if it is a known type.
pub fn known_type(type_url: &str) -> Option<&'static str> {
    types::ALL.into_iter().find(|t| *t == type_url)
}

fn type_version(items: &BTreeMap<String, Resource>) -> String {
    let mut bytes = Vec::new();
    for (name, r) in items {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(r.version.as_bytes());
        bytes.push(0);
    }
    content_version(&bytes)
}

#[derive(Debug)]
pub struct Resources {
    store: Store,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serialises writers, so the snapshot always matches the order of commits.
    writer: Mutex<()>,
}

impl Resources {
    /// Loads every stored resource.
    pub fn load(store: Store) -> Result<Resources, StoreError> {
        let mut snap = Snapshot::default();
        let mut all: BTreeMap<&'static str, TypeState> = types::ALL
            .into_iter()
            .map(|t| (t, TypeState::default()))
            .collect();
        for r in store.resources()? {
            let Some(t) = r.body.as_ref().map(|b| b.type_url()) else {
                continue;
            };
            all.entry(t).or_default().items.insert(r.name.clone(), r);
        }
        for (t, mut state) in all {
            state.version = type_version(&state.items);
            snap.types.insert(t, Arc::new(state));
        }
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Resources {
            store,
            tx,
            writer: Mutex::new(()),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Stores `resource` and publishes it. Returns false when it was already there,
    /// unchanged (nothing is written or pushed then).
    pub async fn put(&self, resource: Resource) -> Result<bool, StoreError> {
        let Some(t) = resource.body.as_ref().map(|b| b.type_url()) else {
            return Ok(false);
        };
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        if current
            .get(t)
            .and_then(|s| s.items.get(&resource.name))
            .is_some_and(|r| r.version == resource.version)
        {
            return Ok(false);
        }
        let store = self.store.clone();
        let r = resource.clone();
        blocking(move || store.put(&r)).await?;
        self.publish(&current, t, |items| {
            items.insert(resource.name.clone(), resource);
        });
        Ok(true)
    }

    /// Stores and publishes several resources at once: one transaction, one new
    /// snapshot. Returns how many changed (unchanged ones are skipped).
    pub async fn put_many(&self, resources: Vec<Resource>) -> Result<usize, StoreError> {
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        let changed: Vec<Resource> = resources
            .into_iter()
            .filter(|r| {
                let Some(t) = r.body.as_ref().map(|b| b.type_url()) else {
                    return false;
                };
                current
                    .get(t)
                    .and_then(|s| s.items.get(&r.name))
                    .is_none_or(|old| old.version != r.version)
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let batch = changed.clone();
        blocking(move || store.put_many(&batch)).await?;
        let n = changed.len();
        let mut types = current.types.clone();
        let mut touched = std::collections::BTreeSet::new();
        for r in changed {
            let t = r
                .body
                .as_ref()
                .map(|b| b.type_url())
                .expect("filtered above");
            Arc::make_mut(types.entry(t).or_default())
                .items
                .insert(r.name.clone(), r);
            touched.insert(t);
        }
        for t in touched {
            let state = Arc::make_mut(types.entry(t).or_default());
            state.version = type_version(&state.items);
        }
        self.tx.send_replace(Arc::new(Snapshot { types }));
        Ok(n)
    }

    /// Deletes a resource and publishes the removal. Returns whether it existed.
    pub async fn delete(&self, type_url: &'static str, name: &str) -> Result<bool, StoreError> {
        let _w = self.writer.lock().await;
        let store = self.store.clone();
        let n = name.to_string();
        let existed = blocking(move || store.delete(type_url, &n)).await?;
        if existed {
            let current = self.snapshot();
            self.publish(&current, type_url, |items| {
                items.remove(name);
            });
        }
        Ok(existed)
    }

    fn publish(
        &self,
        current: &Snapshot,
        type_url: &'static str,
        change: impl FnOnce(&mut BTreeMap<String, Resource>),
    ) {
        let mut types = current.types.clone();
        let state = Arc::make_mut(types.entry(type_url).or_default());
        change(&mut state.items);
        state.version = type_version(&state.items);
        self.tx.send_replace(Arc::new(Snapshot { types }));
    }
}

/// Runs a store call off the event loop (commits fsync).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
