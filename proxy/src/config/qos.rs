//! The QoS parts of a config: tiers (the default four, changed or added to), profiles
//! and subjects, their types and how they are built (references to tiers and profiles
//! checked).

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::raw::RawConfig;
use super::{Builder, Config};

/// A QoS tier, as its index in `Config::tiers` (ordered lowest priority first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tier(pub u8);

/// A QoS tier as the proxy enforces it.
#[derive(Debug, Clone, PartialEq)]
pub struct TierSpec {
    pub name: Arc<str>,
    /// Rank: a higher priority is admitted longer (the order of `Config::tiers`).
    pub priority: i32,
    /// Share of a cluster's `max_in_flight` this tier may fill.
    pub admission_share: f64,
    /// Cap on each response stream, bytes per second (0: none).
    pub bandwidth: f64,
}

/// The default tiers, lowest first, with their admission shares (priorities 1 to 4).
pub const DEFAULT_TIERS: [(&str, f64); 4] = [
    ("bronze", 0.60),
    ("silver", 0.75),
    ("gold", 0.90),
    ("platinum", 1.0),
];
/// The tier of a profile that names none, and of unclassified requests by default.
pub const BASE_TIER: &str = "bronze";
/// More tiers than this are refused (each is a label on the QoS metrics).
pub const MAX_TIERS: usize = 32;

/// A QoS profile: targets, and the rate the proxy admits under it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QosProfileSpec {
    pub name: String,
    pub tier: Tier,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub min_throughput_rps: f64,
    pub min_accuracy: f64,
    pub reliability: f64,
    /// Requests per second this proxy admits under the profile; 0: no limit.
    pub rate_limit_rps: f64,
    /// Deadline of a request under the profile, ms; 0: none.
    pub deadline_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    #[default]
    User,
    Tenant,
}

/// A user's or tenant's assignment: a profile (which carries its tier) or just a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectSpec {
    pub id: String,
    pub kind: SubjectKind,
    pub profile: Option<String>,
    pub tier: Option<Tier>,
}

impl Config {
    pub fn tier(&self, t: Tier) -> &TierSpec {
        &self.tiers[t.0 as usize]
    }
}

impl Builder<'_> {
    /// The default tiers with the config's changes, and its own tiers, lowest first.
    /// A higher tier must be admitted at least as long as a lower one.
    pub(super) fn tiers(&mut self, raw: &RawConfig) -> Vec<TierSpec> {
        let mut tiers: Vec<(TierSpec, Option<usize>)> = DEFAULT_TIERS
            .iter()
            .enumerate()
            .map(|(i, (name, share))| {
                let t = TierSpec {
                    name: (*name).into(),
                    priority: i as i32 + 1,
                    admission_share: *share,
                    bandwidth: 0.0,
                };
                (t, None)
            })
            .collect();
        let mut seen = HashSet::new();
        for (i, t) in raw.qos_tiers.iter().enumerate() {
            let f = |s: &str| format!("qos_tiers[{i}].{s}");
            let name = t.name.value.as_str();
            if !valid_tier_name(name) {
                self.err(
                    t.name.referenced,
                    f("name"),
                    format!("expected 1-63 characters of a-z, 0-9, '-', '_', '.', found {name:?}"),
                );
                continue;
            }
            if !seen.insert(name) {
                self.err(
                    t.name.referenced,
                    f("name"),
                    format!("duplicate QoS tier {name:?}"),
                );
                continue;
            }
            let share = match &t.admission_share {
                Some(s) if !(s.value > 0.0 && s.value <= 1.0) => {
                    self.err(
                        s.referenced,
                        f("admission_share"),
                        format!("expected a fraction in (0, 1], found {}", s.value),
                    );
                    continue;
                }
                other => other.as_ref().map(|s| s.value),
            };
            let bandwidth = match &t.bandwidth_max_mbps {
                Some(m) => match presage_api::qos_limits::check("bandwidth_max_mbps", m.value) {
                    Some(expected) => {
                        self.err(m.referenced, f("bandwidth_max_mbps"), expected);
                        continue;
                    }
                    None => Some(m.value * 1_000_000.0 / 8.0),
                },
                None => None,
            };
            let priority = t.priority.as_ref().map(|p| p.value);
            match tiers.iter_mut().find(|(x, _)| &*x.name == name) {
                Some((x, source)) => {
                    x.admission_share = share.unwrap_or(x.admission_share);
                    x.bandwidth = bandwidth.unwrap_or(x.bandwidth);
                    x.priority = priority.unwrap_or(x.priority);
                    *source = Some(i);
                }
                None => match (priority, share) {
                    (Some(priority), Some(admission_share)) => tiers.push((
                        TierSpec {
                            name: name.into(),
                            priority,
                            admission_share,
                            bandwidth: bandwidth.unwrap_or(0.0),
                        },
                        Some(i),
                    )),
                    _ => self.err(
                        t.name.referenced,
                        f("priority"),
                        format!("the new tier {name:?} needs a priority and an admission_share"),
                    ),
                },
            }
        }
        tiers.sort_by_key(|(t, _)| t.priority);
        if tiers.len() > MAX_TIERS {
            self.err(
                Location::UNKNOWN,
                "qos_tiers",
                format!("at most {MAX_TIERS} tiers, found {}", tiers.len()),
            );
            tiers.truncate(MAX_TIERS);
        }
        // Ordering errors point at the tier this config changed or added.
        for w in tiers.windows(2) {
            let ((lower, l_src), (higher, h_src)) = (&w[0], &w[1]);
            let (at, field) = match h_src.or(*l_src) {
                Some(i) => (raw.qos_tiers[i].name.referenced, format!("qos_tiers[{i}]")),
                None => (Location::UNKNOWN, "qos_tiers".to_string()),
            };
            if lower.priority == higher.priority {
                self.err(
                    at,
                    format!("{field}.priority"),
                    format!(
                        "tiers {:?} and {:?} share priority {}",
                        lower.name, higher.name, lower.priority
                    ),
                );
            } else if lower.admission_share > higher.admission_share {
                self.err(
                    at,
                    format!("{field}.admission_share"),
                    format!(
                        "{} ({}) would exceed {} ({}): a higher tier must be admitted at least as long",
                        lower.name, lower.admission_share, higher.name, higher.admission_share
                    ),
                );
            }
        }
        tiers.into_iter().map(|(t, _)| t).collect()
    }

    /// A reference to a tier by name (`None`: the base tier).
    pub(super) fn tier_ref(
        &mut self,
        tiers: &[TierSpec],
        name: Option<&Spanned<String>>,
        field: impl Into<String>,
    ) -> Tier {
        let wanted = name.map_or(BASE_TIER, |n| n.value.as_str());
        if let Some(i) = tiers.iter().position(|t| &*t.name == wanted) {
            return Tier(i as u8);
        }
        let known: Vec<&str> = tiers.iter().map(|t| &*t.name).collect();
        self.err(
            name.map_or(Location::UNKNOWN, |n| n.referenced),
            field,
            format!("unknown QoS tier {wanted:?}; known: {}", known.join(", ")),
        );
        Tier::default()
    }

    pub(super) fn qos_profiles(
        &mut self,
        raw: &RawConfig,
        tiers: &[TierSpec],
    ) -> Vec<QosProfileSpec> {
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
            let mut num = |v: &Option<Spanned<f64>>, field: &str| match v {
                Some(s) => match presage_api::qos_limits::check(field, s.value) {
                    Some(expected) => {
                        self.err(s.referenced, f(field), expected);
                        0.0
                    }
                    None => s.value,
                },
                None => 0.0,
            };
            out.push(QosProfileSpec {
                name: p.name.value.clone(),
                tier: Tier::default(),
                latency_p50_ms: num(&p.latency_p50_ms, "latency_p50_ms"),
                latency_p99_ms: num(&p.latency_p99_ms, "latency_p99_ms"),
                min_throughput_rps: num(&p.min_throughput_rps, "min_throughput_rps"),
                min_accuracy: num(&p.min_accuracy, "min_accuracy"),
                reliability: num(&p.reliability, "reliability"),
                rate_limit_rps: num(&p.rate_limit_rps, "rate_limit_rps"),
                deadline_ms: num(&p.deadline_ms, "deadline_ms"),
            });
            let tier = self.tier_ref(tiers, p.tier.as_ref(), f("tier"));
            out.last_mut().expect("just pushed").tier = tier;
        }
        out
    }

    pub(super) fn subjects(
        &mut self,
        raw: &RawConfig,
        profiles: &HashSet<&str>,
        tiers: &[TierSpec],
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
            let tier = s
                .tier
                .as_ref()
                .map(|t| self.tier_ref(tiers, Some(t), f("tier")));
            out.push(SubjectSpec {
                id: s.id.value.clone(),
                kind: s.kind,
                profile: s.profile.as_ref().map(|p| p.value.clone()),
                tier,
            });
        }
        out
    }
}

/// A tier name: short, lowercase, usable as a metric label value and in a URL.
fn valid_tier_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}
