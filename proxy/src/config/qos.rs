//! Building the QoS parts of a config: tier admission shares and bandwidth caps,
//! profiles, and subjects (their references to profiles checked).

use std::collections::HashSet;

use serde_saphyr::{Location, Spanned};

use super::raw::RawConfig;
use super::{Builder, QosProfileSpec, SubjectSpec, Tier};

impl Builder<'_> {
    pub(super) fn tier_shares(&mut self, raw: &RawConfig) -> [f64; 4] {
        let mut shares = Tier::ALL.map(Tier::admission_share);
        for (i, t) in raw.qos_tiers.iter().enumerate() {
            let v = t.admission_share.value;
            if !(v > 0.0 && v <= 1.0) {
                self.err(
                    t.admission_share.referenced,
                    format!("qos_tiers[{i}].admission_share"),
                    format!("expected a fraction in (0, 1], found {v}"),
                );
                continue;
            }
            shares[t.name as usize] = v;
        }
        if shares.windows(2).any(|w| w[0] > w[1]) {
            self.err(
                Location::UNKNOWN,
                "qos_tiers",
                format!("admission shares must not fall from bronze to platinum, found {shares:?}"),
            );
        }
        shares
    }

    pub(super) fn tier_bandwidth(&mut self, raw: &RawConfig) -> [f64; 4] {
        let mut caps = [0.0; 4];
        for (i, t) in raw.qos_tiers.iter().enumerate() {
            let Some(mbps) = &t.bandwidth_max_mbps else {
                continue;
            };
            if !(mbps.value.is_finite() && mbps.value >= 0.0) {
                self.err(
                    mbps.referenced,
                    format!("qos_tiers[{i}].bandwidth_max_mbps"),
                    format!("expected a number >= 0, found {}", mbps.value),
                );
                continue;
            }
            caps[t.name as usize] = mbps.value * 1_000_000.0 / 8.0;
        }
        caps
    }

    pub(super) fn qos_profiles(&mut self, raw: &RawConfig) -> Vec<QosProfileSpec> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, p) in raw.qos_profiles.iter().enumerate() {
            let f = |s: &str| format!("qos_profiles[{i}].{s}");
            if !seen.insert(p.name.value.clone()) {
                self.err(
                    p.name.referenced,
                    f("name"),
                    format!("duplicate QoS profile {:?}", p.name.value),
                );
            }
            let mut num = |v: &Option<Spanned<f64>>, field: &str, max: f64| match v {
                Some(s) if !(0.0..=max).contains(&s.value) => {
                    self.err(
                        s.referenced,
                        f(field),
                        format!("expected 0..={max}, found {}", s.value),
                    );
                    0.0
                }
                Some(s) => s.value,
                None => 0.0,
            };
            out.push(QosProfileSpec {
                name: p.name.value.clone(),
                tier: p.tier,
                latency_p50_ms: num(&p.latency_p50_ms, "latency_p50_ms", f64::MAX),
                latency_p99_ms: num(&p.latency_p99_ms, "latency_p99_ms", f64::MAX),
                min_throughput_rps: num(&p.min_throughput_rps, "min_throughput_rps", f64::MAX),
                min_accuracy: num(&p.min_accuracy, "min_accuracy", 1.0),
                reliability: num(&p.reliability, "reliability", 1.0),
                rate_limit_rps: num(&p.rate_limit_rps, "rate_limit_rps", f64::MAX),
                deadline_ms: num(&p.deadline_ms, "deadline_ms", f64::MAX),
            });
        }
        out
    }

    pub(super) fn subjects(
        &mut self,
        raw: &RawConfig,
        profiles: &HashSet<&str>,
    ) -> Vec<SubjectSpec> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, s) in raw.subjects.iter().enumerate() {
            let f = |x: &str| format!("subjects[{i}].{x}");
            if !seen.insert((s.kind, s.id.value.clone())) {
                self.err(
                    s.id.referenced,
                    f("id"),
                    format!("duplicate subject {:?}", s.id.value),
                );
            }
            if let Some(p) = &s.profile {
                if !profiles.contains(p.value.as_str()) {
                    self.err(
                        p.referenced,
                        f("profile"),
                        format!("unknown QoS profile {:?}", p.value),
                    );
                }
            } else if s.tier.is_none() {
                self.err(
                    s.id.referenced,
                    f("profile"),
                    "expected a profile or a tier, found neither",
                );
            }
            out.push(SubjectSpec {
                id: s.id.value.clone(),
                kind: s.kind,
                profile: s.profile.as_ref().map(|p| p.value.clone()),
                tier: s.tier,
            });
        }
        out
    }
}
