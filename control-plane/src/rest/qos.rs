//! The QoS part of the REST API: tiers, profiles, subjects (user and tenant
//! assignments, tenant-scoped), SLA statistics and alerts, and request records.

use super::*;
use crate::auth::Caller;

// === QoS tiers ===

fn tier(b: &Body) -> Option<&QosTier> {
    match b {
        Body::QosTier(t) => Some(t),
        _ => None,
    }
}

/// The tiers, lowest priority first, with their resource allocation.
#[utoipa::path(get, path = "/v1/qos/tiers", responses((status = 200, body = [QosTier])))]
pub(super) async fn list_qos_tiers(State(api): State<Api>) -> Json<Vec<QosTier>> {
    let mut list = items(&api, types::QOS_TIER, tier);
    list.sort_by_key(|t| t.priority);
    Json(list)
}

pub(super) fn tier_exists(api: &Api, name: &str) -> bool {
    item(api, types::QOS_TIER, name, tier).is_some()
}

#[utoipa::path(get, path = "/v1/qos/tiers/{name}", responses((status = 200, body = QosTier), (status = 404, body = ApiError)))]
pub(super) async fn get_qos_tier(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<QosTier>, ApiError> {
    item(&api, types::QOS_TIER, &name, tier)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no QoS tier named {name:?}")))
}

/// Adds a tier or changes one (admins only). Each tier has a priority of its own, and
/// the tiers stay ordered: a higher priority never gets a smaller admission share.
#[utoipa::path(put, path = "/v1/qos/tiers/{name}", request_body = QosTier,
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
pub(super) async fn put_qos_tier(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    let stored = items(&api, types::QOS_TIER, tier);
    write(
        &api,
        name,
        &bytes,
        |t: &mut QosTier| &mut t.name,
        |_| Ok(()),
        |t: &QosTier| validate::qos_tier(t, &stored),
        Body::QosTier,
    )
    .await
}

/// Deletes a tier no profile or subject names (admins only); the four default tiers
/// can be changed but not deleted.
#[utoipa::path(delete, path = "/v1/qos/tiers/{name}",
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn delete_qos_tier(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if crate::tiers::is_default(&name) {
        return Err(ApiError::conflict(format!(
            "{name:?} is a default tier: it can be changed, not deleted"
        )));
    }
    let users: Vec<String> = items(&api, types::QOS_PROFILE, qos)
        .into_iter()
        .filter(|q| q.tier == name)
        .map(|q| format!("QoS profile {:?}", q.name))
        .chain(
            items(&api, types::SUBJECT, subject)
                .into_iter()
                .filter(|s| s.tier == name)
                .map(|s| format!("subject {:?}", s.id)),
        )
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "QoS tier {name:?} is in use by {}",
            users.join(", ")
        )));
    }
    remove(&api, types::QOS_TIER, "QoS tier", &name).await
}

// === QoS profiles ===

/// Whether `caller` may read something owned by `owner`: its own, or shared.
fn visible(caller: &Caller, owner: &str) -> bool {
    owner.is_empty() || caller.owns(owner)
}

/// For a tenant's write: the body's `tenant` must be empty or the caller's own (it is
/// set to it), and an existing resource of that name must already be the caller's.
fn scope_write(
    caller: &Caller,
    tenant: &mut String,
    existing_owner: Option<String>,
    kind: &str,
    name: &str,
) -> Result<(), ApiError> {
    let Some(own) = caller.tenant() else {
        return Ok(());
    };
    if !tenant.is_empty() && tenant != own {
        return Err(ApiError::forbidden(
            Some("tenant"),
            format!("tenant {own:?} cannot write for tenant {tenant:?}"),
        ));
    }
    *tenant = own.to_string();
    match existing_owner {
        Some(owner) if owner != own => Err(ApiError::forbidden(
            None,
            format!("the {kind} {name:?} belongs to another tenant or is shared"),
        )),
        _ => Ok(()),
    }
}

#[utoipa::path(get, path = "/v1/qos/profiles", responses((status = 200, body = [QosProfile])))]
pub(super) async fn list_qos_profiles(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<QosProfile>> {
    let mut list = items(&api, types::QOS_PROFILE, qos);
    list.retain(|q| visible(&caller, &q.tenant));
    Json(list)
}

#[utoipa::path(get, path = "/v1/qos/profiles/{name}", responses((status = 200, body = QosProfile), (status = 404, body = ApiError)))]
pub(super) async fn get_qos_profile(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<QosProfile>, ApiError> {
    item(&api, types::QOS_PROFILE, &name, qos)
        .filter(|q| visible(&caller, &q.tenant))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no QoS profile named {name:?}")))
}

/// `createQoSProfile(profileName, latency, throughput, accuracy, reliability)`, or an
/// update. A tenant's token writes the tenant's own profiles.
#[utoipa::path(put, path = "/v1/qos/profiles/{name}", request_body = QosProfile,
    responses((status = 200, body = Written), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn put_qos_profile(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    let existing = item(&api, types::QOS_PROFILE, &name, qos).map(|q| q.tenant);
    write(
        &api,
        name.clone(),
        &bytes,
        |q: &mut QosProfile| &mut q.name,
        |q| scope_write(&caller, &mut q.tenant, existing, "QoS profile", &name),
        |q: &QosProfile| validate::qos_profile(q, |t| tier_exists(&api, t)),
        Body::QosProfile,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/qos/profiles/{name}", responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn delete_qos_profile(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    match item(&api, types::QOS_PROFILE, &name, qos) {
        Some(q) if !caller.owns(&q.tenant) => {
            return Err(ApiError::forbidden(
                None,
                format!("the QoS profile {name:?} belongs to another tenant or is shared"),
            ))
        }
        None => {
            return Err(ApiError::not_found(format!(
                "no QoS profile named {name:?}"
            )))
        }
        Some(_) => {}
    }
    // Proxies would refuse a config whose routes, subjects or workflows name a missing
    // profile.
    let workflows = items(&api, types::WORKFLOW, super::workflows::workflow);
    let users: Vec<String> = items(&api, types::SUBJECT, subject)
        .into_iter()
        .filter(|s| s.profile == name)
        .map(|s| format!("subject {:?}", s.id))
        .chain(
            items(&api, types::ROUTE, route)
                .into_iter()
                .filter(|r| r.qos_profile == name)
                .map(|r| format!("route {:?}", r.name)),
        )
        .chain(
            crate::workflows::using_profile(&name, &workflows)
                .into_iter()
                .map(|w| format!("workflow {w:?}")),
        )
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "QoS profile {name:?} is in use by {}",
            users.join(", ")
        )));
    }
    remove(&api, types::QOS_PROFILE, "QoS profile", &name).await
}

pub(super) fn profile_exists(api: &Api, name: &str) -> bool {
    item(api, types::QOS_PROFILE, name, qos).is_some()
}

// === SLA ===

/// `getQoSStatistics`: per QoS profile seen for the service, requests, throughput,
/// error rate, p50/p99 latency and SLA attainment over the last minute, hour and day.
#[utoipa::path(get, path = "/v1/services/{name}/qos-statistics",
    responses((status = 200, body = [crate::sla::ProfileStats])))]
pub(super) async fn service_qos_statistics(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Json<Vec<crate::sla::ProfileStats>> {
    let profiles = items(&api, types::QOS_PROFILE, qos)
        .into_iter()
        .map(|q| (q.name.clone(), q))
        .collect();
    let now_s = crate::time::unix_ms().div_euclid(1000);
    Json(api.sla.statistics(&name, now_s, &profiles))
}

/// SLA alerts: firing (newest first), then recently resolved.
#[utoipa::path(get, path = "/v1/alerts", responses((status = 200, body = [crate::sla::alerts::Alert])))]
pub(super) async fn list_alerts(State(api): State<Api>) -> Json<Vec<crate::sla::alerts::Alert>> {
    Json(api.alerts.list())
}

/// `getServiceStatus(requestId)`: how a recent request was handled (status, latency,
/// profile and tier, the instance chosen and why, whether a warm pool served it), as its
/// proxy recorded it; kept 10 minutes (proxies record up to 1,000 requests a second).
#[utoipa::path(get, path = "/v1/requests/{id}", responses((status = 200, body = presage_api::RequestRecord), (status = 404, body = ApiError)))]
pub(super) async fn get_request(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<presage_api::RequestRecord>, ApiError> {
    api.requests.get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no request {id:?} in the last 10 minutes (or its proxy did not record it)"
        ))
    })
}

// === subjects ===

#[utoipa::path(get, path = "/v1/subjects", responses((status = 200, body = [Subject])))]
pub(super) async fn list_subjects(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<Subject>> {
    let mut list = items(&api, types::SUBJECT, subject);
    list.retain(|s| caller.owns(&s.tenant));
    Json(list)
}

#[utoipa::path(get, path = "/v1/subjects/{id}", responses((status = 200, body = Subject), (status = 404, body = ApiError)))]
pub(super) async fn get_subject(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Subject>, ApiError> {
    item(&api, types::SUBJECT, &id, subject)
        .filter(|s| caller.owns(&s.tenant))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no subject {id:?}")))
}

/// Assigns a user or tenant (`kind`, default user) a profile or a tier; every proxy
/// applies it on its next push (within a second). A tenant's token manages the
/// tenant's own subjects, with its own or shared profiles.
#[utoipa::path(put, path = "/v1/subjects/{id}", request_body = Subject,
    responses((status = 200, body = Written), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(super) async fn put_subject(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    let existing = item(&api, types::SUBJECT, &id, subject).map(|s| s.tenant);
    let usable = |p: &str| {
        item(&api, types::QOS_PROFILE, p, qos).is_some_and(|q| visible(&caller, &q.tenant))
    };
    write(
        &api,
        id.clone(),
        &bytes,
        |s: &mut Subject| &mut s.id,
        |s| {
            // Subject ids are global: a tenant names itself as a tenant subject, never
            // another tenant (whose assignment it would otherwise set first).
            if let Some(own) = caller
                .tenant()
                .filter(|own| s.kind == "tenant" && s.id != *own)
            {
                return Err(ApiError::forbidden(
                    Some("id"),
                    format!("tenant {own:?} cannot assign tenant {:?}", s.id),
                ));
            }
            scope_write(&caller, &mut s.tenant, existing, "subject", &id)
        },
        |s: &Subject| validate::subject(s, usable, |t| tier_exists(&api, t)),
        Body::Subject,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/subjects/{id}", responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn delete_subject(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if item(&api, types::SUBJECT, &id, subject).is_some_and(|s| !caller.owns(&s.tenant)) {
        return Err(ApiError::not_found(format!("no subject {id:?}")));
    }
    remove(&api, types::SUBJECT, "subject", &id).await
}
