//! SLA alerts: raised when a (service, profile) pair breaks an objective over the
//! alerting window, resolved when it meets it again; logged, listed at `/v1/alerts`,
//! counted in metrics, and POSTed to webhooks in the Prometheus Alertmanager v2 format
//! (`POST /api/v2/alerts`: a JSON array of `labels`, `annotations`, `startsAt`,
//! `endsAt`, `generatorURL`), so an existing Alertmanager can route them. Firing alerts
//! are re-sent every minute (Alertmanager resolves alerts it stops hearing about); a
//! resolve that cannot be delivered is retried at every evaluation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presage_api::resource::Body;
use presage_api::{types, QosProfile};
use serde::{Deserialize, Serialize};

use super::{breaches, Sla};
use crate::metrics::Metrics;
use crate::resources::Resources;

const RESEND: Duration = Duration::from_secs(60);
/// Resolved alerts kept for `/v1/alerts`.
const KEEP_RESOLVED: usize = 1000;

/// `alerting:` in the control plane's YAML.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// URLs that receive alerts, e.g. `http://alertmanager:9093/api/v2/alerts`.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// How often objectives are evaluated (default 10 s).
    #[serde(default, with = "crate::config::humantime_opt")]
    pub interval: Option<Duration>,
    /// The window an objective is judged over (default 1 min; 10 s resolution).
    #[serde(default, with = "crate::config::humantime_opt")]
    pub window: Option<Duration>,
    /// Requests the window needs before it is judged (default 20).
    #[serde(default)]
    pub min_requests: Option<u64>,
}

impl AlertingConfig {
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(10))
    }
    fn window_s(&self) -> i64 {
        self.window.map_or(60, |w| w.as_secs().max(10) as i64)
    }
    fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(20)
    }
}

/// One alert, as `/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// `service/profile/objective`.
    pub id: String,
    pub service: String,
    pub qos_profile: String,
    pub tier: String,
    /// `latency_p99`, `latency_p50` or `reliability`; `negotiation` for a scale-up the
    /// dependencies refused (`measured`: instances granted, `target`: wanted).
    pub objective: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The measured value when last evaluated (ms, or a success fraction).
    pub measured: f64,
    pub target: f64,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: Option<String>,
    pub message: String,
}

#[derive(Debug, Default)]
struct State {
    firing: BTreeMap<String, (Alert, Option<SystemTime>)>,
    resolved: VecDeque<Alert>,
    /// Resolves not yet delivered to every webhook.
    undelivered: Vec<Alert>,
}

/// Every alert, firing and recently resolved.
#[derive(Debug, Default)]
pub struct Alerts {
    state: Mutex<State>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const OBJECTIVES: [&str; 3] = ["latency_p99", "latency_p50", "reliability"];

impl Alerts {
    /// Firing first (newest first), then resolved (newest first).
    pub fn list(&self) -> Vec<Alert> {
        let s = self.state.lock().expect("alerts lock poisoned");
        let mut firing: Vec<Alert> = s.firing.values().map(|(a, _)| a.clone()).collect();
        firing.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        firing.extend(s.resolved.iter().rev().cloned());
        firing
    }

    pub fn firing(&self) -> usize {
        self.state
            .lock()
            .expect("alerts lock poisoned")
            .firing
            .len()
    }

    /// Evaluates every pair at `now`; returns the alerts to deliver (new, resolved, due
    /// for a resend), and marks the firing ones as sent.
    pub fn evaluate(
        &self,
        now: SystemTime,
        sla: &Sla,
        profiles: &BTreeMap<String, QosProfile>,
        cfg: &AlertingConfig,
        metrics: &Metrics,
    ) -> Vec<Alert> {
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut s = self.state.lock().expect("alerts lock poisoned");
        let mut out = std::mem::take(&mut s.undelivered);
        for (service, profile) in sla.pairs() {
            let Some(p) = profiles.get(&profile) else {
                continue;
            };
            let Some(summary) = sla.recent(&service, &profile, now_s, cfg.window_s()) else {
                continue;
            };
            if summary.requests < cfg.min_requests() {
                continue; // too little traffic to judge either way
            }
            let found = breaches(&summary, p);
            for objective in OBJECTIVES {
                let id = format!("{service}/{profile}/{objective}");
                match found.iter().find(|b| b.0 == objective) {
                    Some(&(_, measured, target)) => {
                        let message = format!(
                            "{service} under QoS profile {profile}: {objective} {measured:.3} breaks the target {target} over the last {}s",
                            cfg.window_s()
                        );
                        if let Some((a, _)) = s.firing.get_mut(&id) {
                            a.measured = measured;
                            a.message = message;
                            continue;
                        }
                        tracing::warn!(%service, %profile, objective, measured, target, "SLA breach");
                        metrics
                            .sla_breaches
                            .get_or_create(&crate::metrics::ObjectiveLabels { objective })
                            .inc();
                        let alert = Alert {
                            id: id.clone(),
                            service: service.clone(),
                            qos_profile: profile.clone(),
                            tier: p.tier.clone(),
                            objective: objective.into(),
                            state: "firing".into(),
                            measured,
                            target,
                            started_at: rfc3339(now),
                            ended_at: None,
                            message,
                        };
                        s.firing.insert(id, (alert, None));
                    }
                    None => {
                        if let Some((mut a, _)) = s.firing.remove(&id) {
                            tracing::info!(%service, %profile, objective, "SLA met again; alert resolved");
                            a.state = "resolved".into();
                            a.ended_at = Some(rfc3339(now));
                            out.push(a.clone());
                            s.resolved.push_back(a);
                            if s.resolved.len() > KEEP_RESOLVED {
                                s.resolved.pop_front();
                            }
                        }
                    }
                }
            }
        }
        for (a, sent) in s.firing.values_mut() {
            if sent.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= RESEND) {
                *sent = Some(now);
                out.push(a.clone());
            }
        }
        metrics.alerts_firing.set(s.firing.len() as i64);
        out
    }

    /// Fires (once; later calls update it) the alert of a scale-up of `n.service` that
    /// its dependencies could not carry at all; delivered with the SLA alerts.
    pub fn raise_negotiation(&self, n: &crate::negotiate::Negotiation) {
        let id = format!("{}/-/negotiation", n.service);
        let message = format!(
            "{}: scaling from {} to {} instances was refused by its dependencies ({:.1} req/s more asked, none carried)",
            n.service, n.current, n.wanted, n.extra_rps
        );
        let mut s = self.state.lock().expect("alerts lock poisoned");
        if let Some((a, _)) = s.firing.get_mut(&id) {
            a.measured = f64::from(n.granted);
            a.target = f64::from(n.wanted);
            a.message = message;
            return;
        }
        tracing::warn!(service = %n.service, "negotiation failed: alert");
        let alert = Alert {
            id: id.clone(),
            service: n.service.clone(),
            qos_profile: String::new(),
            tier: String::new(),
            objective: "negotiation".into(),
            state: "firing".into(),
            measured: f64::from(n.granted),
            target: f64::from(n.wanted),
            started_at: rfc3339(SystemTime::now()),
            ended_at: None,
            message,
        };
        s.firing.insert(id, (alert, None));
    }

    /// Resolves `service`'s negotiation alert, if one is firing.
    pub fn resolve_negotiation(&self, service: &str) {
        let id = format!("{service}/-/negotiation");
        let mut s = self.state.lock().expect("alerts lock poisoned");
        if let Some((mut a, _)) = s.firing.remove(&id) {
            a.state = "resolved".into();
            a.ended_at = Some(rfc3339(SystemTime::now()));
            s.undelivered.push(a.clone());
            s.resolved.push_back(a);
            if s.resolved.len() > KEEP_RESOLVED {
                s.resolved.pop_front();
            }
        }
    }

    /// Keeps resolves that could not be delivered for the next round.
    fn retry_later(&self, alerts: Vec<Alert>) {
        let mut s = self.state.lock().expect("alerts lock poisoned");
        s.undelivered
            .extend(alerts.into_iter().filter(|a| a.state == "resolved"));
    }
}

/// The Alertmanager v2 form of alerts.
pub fn alertmanager_body(alerts: &[Alert], generator_url: &str) -> serde_json::Value {
    let items: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::json!({
                "labels": {
                    "alertname": "PresageSLABreach",
                    "service": a.service,
                    "qos_profile": a.qos_profile,
                    "tier": a.tier,
                    "objective": a.objective,
                    "severity": if a.tier == "platinum" || a.tier == "gold" { "critical" } else { "warning" },
                },
                "annotations": {
                    "summary": format!("SLA breach: {} {} ({})", a.service, a.objective, a.qos_profile),
                    "description": a.message,
                },
                "startsAt": a.started_at,
                "generatorURL": generator_url,
            });
            if let Some(end) = &a.ended_at {
                v["endsAt"] = serde_json::json!(end);
            }
            v
        })
        .collect();
    serde_json::Value::Array(items)
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn client() -> Client {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

async fn post(client: &Client, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .map_err(|e| format!("{url}: {e}"))?;
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: {}", res.status()))
    }
}

/// Evaluates every `interval` until the process ends, delivering to the webhooks.
pub async fn run(
    cfg: AlertingConfig,
    sla: Arc<Sla>,
    alerts: Arc<Alerts>,
    resources: Arc<Resources>,
    metrics: Arc<Metrics>,
    generator_url: String,
) {
    let client = client();
    let mut tick = tokio::time::interval(cfg.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = resources.snapshot();
        let profiles: BTreeMap<String, QosProfile> = snap
            .get(types::QOS_PROFILE)
            .map(|t| {
                t.items
                    .iter()
                    .filter_map(|(n, r)| match &r.body {
                        Some(Body::QosProfile(q)) => Some((n.clone(), q.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let due = alerts.evaluate(SystemTime::now(), &sla, &profiles, &cfg, &metrics);
        if due.is_empty() || cfg.webhooks.is_empty() {
            continue;
        }
        let body = alertmanager_body(&due, &generator_url);
        let mut failed = false;
        for url in &cfg.webhooks {
            if let Err(e) = post(&client, url, &body).await {
                failed = true;
                metrics.alert_webhook_failures.inc();
                tracing::warn!(error = %e, "alert webhook failed; resolves are retried");
            }
        }
        if failed {
            alerts.retry_later(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(unix_s: i64, n: u64, ms: u64) -> presage_api::LoadReport {
        crate::sla::tests::report(unix_s, "web", "fast", n, 0, ms)
    }

    #[test]
    fn a_breach_fires_once_resends_and_resolves() {
        let sla = Sla::default();
        let alerts = Alerts::default();
        let metrics = Metrics::default();
        let cfg = AlertingConfig {
            window: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let profiles = BTreeMap::from([(
            "fast".to_string(),
            QosProfile {
                name: "fast".into(),
                tier: "gold".into(),
                latency_p99_ms: 50.0,
                ..Default::default()
            },
        )]);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        // Too little traffic: not judged.
        sla.ingest(&report(1_000, 5, 200));
        assert!(alerts
            .evaluate(at(1_005), &sla, &profiles, &cfg, &metrics)
            .is_empty());
        // Enough, and slow: fires.
        sla.ingest(&report(1_001, 50, 200));
        let due = alerts.evaluate(at(1_005), &sla, &profiles, &cfg, &metrics);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].objective.as_str(), due[0].state.as_str()),
            ("latency_p99", "firing")
        );
        assert_eq!(alerts.firing(), 1);
        // Still breached: not re-sent until a minute has passed.
        assert!(alerts
            .evaluate(at(1_008), &sla, &profiles, &cfg, &metrics)
            .is_empty());
        // The next bucket is fast and the slow one is out of the window: resolved.
        sla.ingest(&report(1_012, 50, 5));
        let due = alerts.evaluate(at(1_019), &sla, &profiles, &cfg, &metrics);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].state, "resolved");
        assert!(due[0].ended_at.is_some());
        assert_eq!(alerts.firing(), 0);
        assert_eq!(alerts.list().len(), 1);
        let body = alertmanager_body(&due, "http://cp/v1/alerts");
        assert_eq!(body[0]["labels"]["alertname"], "PresageSLABreach");
        assert_eq!(body[0]["labels"]["severity"], "critical");
        assert!(body[0]["endsAt"].is_string());
    }
}
