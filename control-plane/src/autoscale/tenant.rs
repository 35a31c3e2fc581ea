//! A tenant's cost ceiling shared among the services whose policy names it: each gets
//! its minimum, then the highest active tier's services are served first
//! (`policy::share`). The policy read is the one in force: the config's, or what
//! `PUT /v1/autoscaling/{service}/policy` replaced it with.

use super::policy::{self, Claim, TenantCeiling};
use super::{Autoscaling, Planned, Scaled};

/// Caps the planned targets of `tenant`'s services to what its ceiling grants.
pub(super) fn contend(
    tenant: &str,
    ceiling: &TenantCeiling,
    scaled: &[Scaled],
    shared: &Autoscaling,
    planned: &mut [Planned],
) {
    let policies: Vec<_> = scaled
        .iter()
        .map(|s| {
            shared
                .policy(&s.cfg.service)
                .unwrap_or_else(|| s.cfg.policy.clone())
        })
        .collect();
    let members: Vec<usize> = (0..scaled.len())
        .filter(|i| policies[*i].tenant.as_deref() == Some(tenant))
        .collect();
    let claims: Vec<Claim> = members
        .iter()
        .map(|&i| Claim {
            service: scaled[i].cfg.service.clone(),
            priority: planned[i].active.as_ref().map_or(1, |a| a.priority),
            min: scaled[i].planner.config().min_instances,
            target: planned[i].target,
            price_per_hour: policies[i].price_per_hour,
        })
        .collect();
    let granted = policy::share(ceiling.max_cost_per_hour, &claims);
    for (k, &i) in members.iter().enumerate() {
        if granted[k] < planned[i].target {
            planned[i].adjustments.push(format!(
                "tenant {tenant} ceiling {}/h grants {} of {} (higher tiers first; the proxies shed the rest from the lowest tier)",
                ceiling.max_cost_per_hour, granted[k], planned[i].target
            ));
            planned[i].target = granted[k];
        }
    }
}
