//! The QoS tiers and their resource allocation: the default set (which operators
//! change and add to through the API; `validate::qos_tier` keeps them ordered).

use presage_api::QosTier;

/// The default tiers' names, lowest first.
pub const NAMES: [&str; 4] = ["bronze", "silver", "gold", "platinum"];
/// At most this many tiers (the proxy's limit: each is a label on its QoS metrics).
pub const MAX: usize = 32;

/// The default allocation of each tier, seeded into the store when absent.
pub fn defaults() -> Vec<QosTier> {
    let tier =
        |i: usize, share: f64, cpu: u32, mem: u32, bw: (f64, f64), io: (u32, f64), price: f64| {
            QosTier {
                name: NAMES[i].into(),
                priority: i as i32 + 1,
                admission_share: share,
                cpu_shares: cpu,
                memory_mb: mem,
                bandwidth_min_mbps: bw.0,
                bandwidth_max_mbps: bw.1,
                io_priority: io.0,
                io_limit_mbps: io.1,
                price_per_hour: price,
            }
        };
    // No bandwidth caps by default (Bronze is also the tier of unclassified traffic);
    // operators set `bandwidth_max_mbps` per tier.
    vec![
        tier(0, 0.60, 100, 128, (1.0, 0.0), (100, 20.0), 0.01),
        tier(1, 0.75, 200, 256, (5.0, 0.0), (200, 50.0), 0.03),
        tier(2, 0.90, 400, 512, (20.0, 0.0), (400, 200.0), 0.08),
        tier(3, 1.00, 800, 1024, (50.0, 0.0), (800, 0.0), 0.20),
    ]
}

/// Whether `name` is one of the default tiers (which can be changed, not deleted: a
/// profile without a tier is bronze, and proxies keep the four).
pub fn is_default(name: &str) -> bool {
    NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_grow_with_the_tier_and_pass_validation() {
        let d = defaults();
        for w in d.windows(2) {
            assert!(w[0].priority < w[1].priority);
            assert!(w[0].admission_share <= w[1].admission_share);
            assert!(w[0].price_per_hour < w[1].price_per_hour);
        }
        for t in &d {
            assert!(crate::validate::qos_tier(t, &d).is_empty(), "{t:?}");
        }
    }
}
