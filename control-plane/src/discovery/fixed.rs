//! The static backend: instances listed in the control plane's YAML
//! (`discovery.static`), sent once at start and never changed until a restart.

use std::collections::BTreeMap;
use std::future::pending;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::record::Record;
use super::{Instance, Update};

pub const NAME: &str = "static";

/// One service's fixed instances, by instance id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticService {
    pub service: String,
    pub instances: BTreeMap<String, Record>,
}

/// Sends every listed service, reports the registry up, then idles.
pub async fn watch(services: Vec<StaticService>, tx: mpsc::Sender<Update>) {
    for s in services {
        let instances = s
            .instances
            .into_iter()
            .map(|(id, record)| Instance { id, record })
            .collect();
        if tx
            .send(Update::Service {
                registry: NAME,
                service: s.service,
                instances,
            })
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = tx
        .send(Update::Status {
            registry: NAME,
            up: true,
            error: None,
        })
        .await;
    pending::<()>().await;
}
