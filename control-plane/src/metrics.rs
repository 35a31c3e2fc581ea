//! The control plane's own Prometheus metrics, served at `GET /metrics` of the REST API.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::proxies::Proxies;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectiveLabels {
    pub objective: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
    /// The forecast's step: `1s` (the next minute) or `1m` (the next hour).
    pub resolution: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoverageLabels {
    pub service: String,
    pub resolution: &'static str,
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SelectionLabels {
    pub service: String,
    pub resolution: &'static str,
    pub reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Realised mean absolute error of each service's published forecasts (requests/s).
    pub forecast_abs_error: Family<ServiceLabels, FloatGauge>,
    /// Share of seconds that fell inside the 80% / 95% forecast interval.
    pub forecast_coverage: Family<CoverageLabels, FloatGauge>,
    /// The chosen model's backtest MASE.
    pub forecast_backtest_mase: Family<ServiceLabels, FloatGauge>,
    /// Model choices by reason (first, horizon, schedule, drift).
    pub forecast_selections: Family<SelectionLabels, Counter>,
    /// SLA alerts raised, by objective.
    pub sla_breaches: Family<ObjectiveLabels, Counter>,
    pub alerts_firing: Gauge,
    pub alert_webhook_failures: Counter,
    /// 1 while the registry is reachable and in sync, 0 during an outage.
    pub discovery_up: Family<RegistryLabels, Gauge>,
    pub discovery_errors: Family<RegistryLabels, Counter>,
    /// Records skipped as bad data (malformed JSON, missing port, unknown fields, ...).
    pub discovery_skipped: Family<RegistryLabels, Counter>,
    /// Service updates applied from the registry.
    pub discovery_updates: Family<RegistryLabels, Counter>,
    /// Workload certificate requests, by result (signed, rejected).
    pub certificates: Family<ResultLabels, Counter>,
    /// The autoscaler's target per scaled service.
    pub scaling_target: Family<ScaledLabels, Gauge>,
    /// Instances per scaled service, by state (ready, starting, warm).
    pub scaling_instances: Family<InstanceLabels, Gauge>,
    /// Measured launch-to-ready time per scaled service.
    pub cold_start_seconds: Family<ScaledLabels, FloatGauge>,
    /// Changes of target, by direction (up, down, first).
    pub scaling_actions: Family<ActionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaledLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub service: String,
    pub direction: &'static str,
}

impl Metrics {
    /// A registry with everything under `presage_cp_`.
    pub fn registry(self: &Arc<Self>, proxies: Arc<Proxies>) -> Registry {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("presage_cp");
        r.register(
            "discovery_up",
            "1 while the registry is reachable and in sync",
            self.discovery_up.clone(),
        );
        r.register(
            "discovery_errors",
            "Registry connection or watch failures",
            self.discovery_errors.clone(),
        );
        r.register(
            "discovery_skipped",
            "Registry records skipped as bad data",
            self.discovery_skipped.clone(),
        );
        r.register(
            "discovery_updates",
            "Service updates applied from registries",
            self.discovery_updates.clone(),
        );
        r.register(
            "sla_breaches",
            "SLA alerts raised, by objective (latency_p99, latency_p50, reliability)",
            self.sla_breaches.clone(),
        );
        r.register(
            "alerts_firing",
            "SLA alerts firing now",
            self.alerts_firing.clone(),
        );
        r.register(
            "alert_webhook_failures",
            "Alert deliveries to a webhook that failed",
            self.alert_webhook_failures.clone(),
        );
        r.register(
            "forecast_abs_error",
            "Realised mean absolute error of the service's published forecasts, requests/s (about the last 300 s scored)",
            self.forecast_abs_error.clone(),
        );
        r.register(
            "forecast_coverage",
            "Share of seconds that fell inside the forecast's 80% or 95% interval",
            self.forecast_coverage.clone(),
        );
        r.register(
            "forecast_backtest_mase",
            "Backtest MASE of the service's chosen forecasting model",
            self.forecast_backtest_mase.clone(),
        );
        r.register(
            "forecast_model_selections",
            "Forecasting model choices, by reason (first, horizon, schedule, drift)",
            self.forecast_selections.clone(),
        );
        r.register(
            "certificates",
            "Workload certificate requests from proxies, by result (signed; rejected: a bad field; denied: attestation refused the identity asked for; unavailable: the API server could not be asked)",
            self.certificates.clone(),
        );
        r.register(
            "scaling_target",
            "Instances the autoscaler wants for the service",
            self.scaling_target.clone(),
        );
        r.register(
            "scaling_instances",
            "Instances of the scaled service, by state (ready, starting, warm: ready and reserved for a tier)",
            self.scaling_instances.clone(),
        );
        r.register(
            "cold_start_seconds",
            "Measured launch-to-ready time of the service's instances (smoothed)",
            self.cold_start_seconds.clone(),
        );
        r.register(
            "scaling_actions",
            "Changes of the autoscaler's target, by direction (first, up, down)",
            self.scaling_actions.clone(),
        );
        r.register_collector(Box::new(ProxyGauges(proxies)));
        registry
    }
}

impl Metrics {
    /// Records one autoscaling step of `service`.
    pub fn scaling(&self, service: &str, target: u32, status: &crate::actuate::Status) {
        let labels = ScaledLabels {
            service: service.to_string(),
        };
        self.scaling_target
            .get_or_create(&labels)
            .set(i64::from(target));
        if let Some(c) = status.cold_start {
            self.cold_start_seconds
                .get_or_create(&labels)
                .set(c.as_secs_f64());
        }
        for (state, n) in [
            ("ready", status.ready),
            ("starting", status.starting),
            ("warm", status.warm_ready),
        ] {
            self.scaling_instances
                .get_or_create(&InstanceLabels {
                    service: service.to_string(),
                    state,
                })
                .set(i64::from(n));
        }
    }

    pub fn scaling_action(&self, service: &str, previous: Option<u32>, target: u32) {
        let direction = match previous {
            None => "first",
            Some(p) if target > p => "up",
            Some(_) => "down",
        };
        self.scaling_actions
            .get_or_create(&ActionLabels {
                service: service.to_string(),
                direction,
            })
            .inc();
    }

    pub fn certificates_signed(&self, result: &'static str) {
        self.certificates
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records one service's forecasting step.
    pub fn forecast_step(&self, s: &crate::predict::Step) {
        let service = s.forecast.service.clone();
        if let Some(reason) = s.reselected {
            self.forecast_selections
                .get_or_create(&SelectionLabels {
                    service: service.clone(),
                    resolution: s.resolution,
                    reason: reason.as_str(),
                })
                .inc();
        }
        let labels = ServiceLabels {
            service: service.clone(),
            resolution: s.resolution,
        };
        self.forecast_backtest_mase
            .get_or_create(&labels)
            .set(s.backtest_mase);
        if s.realised.scored > 0 {
            self.forecast_abs_error
                .get_or_create(&labels)
                .set(s.realised.abs_error);
            for (level, v) in [("80", s.realised.coverage80), ("95", s.realised.coverage95)] {
                self.forecast_coverage
                    .get_or_create(&CoverageLabels {
                        service: service.clone(),
                        resolution: s.resolution,
                        level,
                    })
                    .set(v);
            }
        }
    }
}

/// Connected proxies and their NACKs, read at scrape time.
#[derive(Debug)]
struct ProxyGauges(Arc<Proxies>);

impl Collector for ProxyGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let list = self.0.list();
        let connected = list.iter().filter(|p| p.connected).count() as i64;
        let nacks: i64 = list.iter().map(|p| p.nacks as i64).sum();
        let m = encoder.encode_descriptor(
            "connected_proxies",
            "Proxies with an open discovery stream",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(connected).encode(m)?;
        let m = encoder.encode_descriptor(
            "proxy_nacks",
            "NACKs from the proxies now known",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(nacks).encode(m)?;
        Ok(())
    }
}

/// OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
