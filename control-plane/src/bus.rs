//! The internal event bus: what other systems may want to follow as it happens (each
//! negotiation's proposals, answers and outcome), as JSON events on subjects such as
//! `negotiation.proposal.db`; and its optional exporter to NATS (`events.nats` in the
//! control plane's config), which publishes each under `<subject_prefix>.<subject>`.
//!
//! The bus never waits for a reader: a slow exporter loses the oldest events (counted
//! and logged), never holds back the autoscaler.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{broadcast, watch};

/// Events buffered per reader.
const CAPACITY: usize = 4096;

/// One event: its subject (dot-separated, NATS style) and its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Bus {
    pub fn publish(&self, subject: String, body: serde_json::Value) {
        // No reader: nobody follows; the event is not needed.
        let _ = self.tx.send(Arc::new(Event { subject, body }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// `events:` in the control plane's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub nats: Option<NatsConfig>,
}

/// `events.nats`: a NATS server the bus's events are published to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` (several comma-separated for a cluster).
    pub url: String,
    /// Subjects are `<subject_prefix>.<event subject>` (default `presage`).
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

impl NatsConfig {
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        let ok = self.url.split(',').all(|u| {
            let u = u.trim();
            (u.starts_with("nats://") || u.starts_with("tls://")) && u.len() > 7
        });
        if !ok {
            e.push(format!(
                "url: expected nats://host:port (comma-separated for several), found {:?}",
                self.url
            ));
        }
        if let Some(p) = &self.subject_prefix {
            if p.is_empty()
                || p.split('.')
                    .any(|t| t.is_empty() || t.contains([' ', '*', '>']))
            {
                e.push(format!(
                    "subject_prefix: expected dot-separated tokens without spaces or wildcards, found {p:?}"
                ));
            }
        }
        e
    }

    fn prefix(&self) -> &str {
        self.subject_prefix.as_deref().unwrap_or("presage")
    }
}

/// Publishes every event of `bus` to NATS until `stop`; connects again (the client
/// reconnects on its own once connected; the first connection is retried with backoff).
pub async fn export_nats(cfg: NatsConfig, bus: Bus, mut stop: watch::Receiver<bool>) {
    let mut events = bus.subscribe();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    let mut backoff = Duration::from_millis(200);
    let client = loop {
        let connect = async_nats::ConnectOptions::new()
            .name("presage-control-plane")
            .retry_on_initial_connect()
            .connect(cfg.url.as_str());
        tokio::select! {
            c = connect => match c {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(url = %cfg.url, error = %e, "NATS: cannot connect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            _ = &mut stopped => return,
        }
    };
    tracing::info!(url = %cfg.url, "NATS: exporting the event bus");
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = &mut stopped => break,
        };
        match event {
            Ok(e) => {
                let subject = format!("{}.{}", cfg.prefix(), e.subject);
                let body = serde_json::to_vec(&e.body).expect("an event serializes");
                if let Err(err) = client.publish(subject, body.into()).await {
                    tracing::warn!(error = %err, "NATS: an event could not be published");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(lost = n, "NATS: the exporter fell behind; events lost");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    let _ = client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_settings_are_checked() {
        let ok = NatsConfig {
            url: "nats://127.0.0.1:4222, nats://10.0.0.2:4222".into(),
            subject_prefix: Some("mesh.prod".into()),
        };
        assert!(ok.check().is_empty());
        let bad = NatsConfig {
            url: "http://x".into(),
            subject_prefix: Some("a..b".into()),
        };
        let e = bad.check();
        assert!(
            e[0].starts_with("url:") && e[1].starts_with("subject_prefix:"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn every_reader_gets_each_event() {
        let bus = Bus::default();
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        bus.publish(
            "negotiation.outcome.web".into(),
            serde_json::json!({"granted": 2}),
        );
        for r in [&mut a, &mut b] {
            let e = r.recv().await.unwrap();
            assert_eq!(e.subject, "negotiation.outcome.web");
            assert_eq!(e.body["granted"], 2);
        }
    }
}
