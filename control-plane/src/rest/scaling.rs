//! The autoscaler over REST: each scaled service's state now, and the recorded
//! decisions with their reasons.

use super::*;
use crate::autoscale::policy::Policy;
use crate::autoscale::{DecisionRecord, PolicyError, ServiceState};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionsQuery {
    /// Only this service's.
    service: Option<String>,
    /// How many, newest first (1-1000, default 100).
    limit: Option<usize>,
}

/// Every scaling decision that changed a target, newest first: the target before and
/// after, the reason in words, and the planner's numbers.
#[utoipa::path(get, path = "/v1/decisions", params(DecisionsQuery),
    responses((status = 200, body = [DecisionRecord]), (status = 400, body = ApiError)))]
pub(super) async fn list_decisions(
    State(api): State<Api>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<DecisionRecord>>, ApiError> {
    let q: DecisionsQuery = query(q)?;
    let limit = limit(q.limit)?;
    Ok(Json(api.autoscaling.decisions(q.service, limit).await?))
}

/// The scaled services: actuator, target, instances ready and starting, the measured
/// cold start and the latest decision.
#[utoipa::path(get, path = "/v1/autoscaling", responses((status = 200, body = [ServiceState])))]
pub(super) async fn list_scaled(State(api): State<Api>) -> Json<Vec<ServiceState>> {
    Json(api.autoscaling.services())
}

/// The policy in force for a scaled service: rules, cooldown, cost ceilings, tenant.
#[utoipa::path(get, path = "/v1/autoscaling/{service}/policy",
    responses((status = 200, body = Policy), (status = 404, body = ApiError)))]
pub(super) async fn get_policy(
    State(api): State<Api>,
    Path(service): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    api.autoscaling.policy(&service).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("{service:?} is not scaled (autoscaling.services)"))
    })
}

/// Replaces a scaled service's policy; kept in the store (it outlives the config's
/// until the next `PUT`) and applied from the next decision on.
#[utoipa::path(put, path = "/v1/autoscaling/{service}/policy", request_body = Policy,
    responses((status = 200, body = Policy), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn put_policy(
    State(api): State<Api>,
    Path(service): Path<String>,
    bytes: Bytes,
) -> Result<Json<Policy>, ApiError> {
    let policy: Policy = body(&bytes)?;
    match api.autoscaling.put_policy(&service, policy.clone()).await {
        Ok(Some(())) => Ok(Json(policy)),
        Ok(None) => Err(ApiError::not_found(format!(
            "{service:?} is not scaled (autoscaling.services)"
        ))),
        Err(PolicyError::Invalid(errors)) => Err(ApiError::invalid(
            errors
                .into_iter()
                .map(|(field, message)| FieldError { field, message })
                .collect(),
        )),
        Err(PolicyError::Store(e)) => Err(e.into()),
    }
}

/// Negotiations of scale-ups with the services' dependencies, newest first: what was
/// wanted and granted, every proposal and answer, degraded dependencies.
#[utoipa::path(get, path = "/v1/negotiations", params(DecisionsQuery),
    responses((status = 200, body = [crate::negotiate::Negotiation]), (status = 400, body = ApiError)))]
pub(super) async fn list_negotiations(
    State(api): State<Api>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<crate::negotiate::Negotiation>>, ApiError> {
    let q: DecisionsQuery = query(q)?;
    let limit = limit(q.limit)?;
    Ok(Json(
        api.autoscaling
            .negotiations
            .list(q.service.as_deref(), limit),
    ))
}

/// `limit`: 1 to 1000, default 100.
fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "limit".into(),
            message: format!("expected 1 to 1000, found {limit}"),
        }]));
    }
    Ok(limit)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    /// Seconds ahead to forecast (1-600, default 60).
    horizon: Option<usize>,
}

/// Each instance's CPU (cores) and resident memory (bytes) now, over the last minute, and
/// forecast `horizon` seconds ahead with a 95% interval; sampled every second by the
/// local actuator. 404 when the service is not scaled or its actuator cannot see its
/// instances' processes.
#[utoipa::path(get, path = "/v1/services/{name}/usage", params(UsageQuery),
    responses((status = 200, body = [crate::actuate::usage::InstanceUsage]),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn service_usage(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<crate::actuate::usage::InstanceUsage>>, ApiError> {
    let q: UsageQuery = query(q)?;
    let horizon = q.horizon.unwrap_or(60);
    if !(1..=600).contains(&horizon) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "horizon".into(),
            message: format!("expected 1 to 600 seconds, found {horizon}"),
        }]));
    }
    let usage = api.autoscaling.usage(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no instance usage for {name:?}: it is not scaled by an actuator that sees its instances (autoscaling.services with a local actuator)"
        ))
    })?;
    // Fitting is CPU work: off the async threads.
    let series = usage.series();
    let out = tokio::task::spawn_blocking(move || {
        series
            .iter()
            .map(|s| s.summary(horizon))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Ok(Json(out))
}
