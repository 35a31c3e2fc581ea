//! The REST API (axum) and its OpenAPI document (utoipa, derived from the handlers and
//! served at `/openapi.json`). Reads come from memory; writes are validated, stored
//! durably, then pushed to proxies by the discovery streams.
//!
//! Errors are JSON: `{"message": "...", "field": "...", "errors": [{field, message}]}`
//! with 400 for a bad body (the field named), 404 for an unknown name, 500 for a store
//! failure.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use presage_api::resource::Body;

use presage_api::{types, Cluster, Endpoint, QosProfile, QosTier, Resource, Route, Subject};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::behaviour::Profiler;
use crate::load::{Load, Point};
use crate::proxies::{Proxies, ProxyStatus};
use crate::resources::Resources;
use crate::store::StoreError;
use crate::validate::{self, FieldError};
use input::{body, query};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    pub requests: Arc<crate::requests::Requests>,
    pub sla: Arc<crate::sla::Sla>,
    pub alerts: Arc<crate::sla::alerts::Alerts>,
    pub resources: Arc<Resources>,
    pub proxies: Arc<Proxies>,
    pub load: Arc<Load>,
    pub profiler: Arc<Mutex<Profiler>>,
    /// The control plane's Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<prometheus_client::registry::Registry>,
    pub ejections: Arc<crate::health::Ejections>,
    pub autoscaling: Arc<crate::autoscale::Autoscaling>,
    pub deps: Arc<crate::deps::Dependencies>,
}

/// Declares the bearer-token scheme (see `auth`) and requires it everywhere; `/metrics`
/// and `/openapi.json` are open, and with no token configured so is everything.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    info(
        title = "Presage control plane",
        description = "Services, routes, QoS profiles, connected proxies and load."
    ),
    paths(
        list_services,
        get_service,
        put_service,
        delete_service,
        service_instances,
        demand::service_load,
        demand::service_forecast,
        list_routes,
        get_route,
        put_route,
        delete_route,
        qos::list_qos_profiles,
        qos::list_qos_tiers,
        qos::get_qos_tier,
        qos::put_qos_tier,
        qos::delete_qos_tier,
        qos::get_qos_profile,
        qos::put_qos_profile,
        qos::delete_qos_profile,
        qos::list_subjects,
        qos::service_qos_statistics,
        qos::list_alerts,
        qos::get_request,
        qos::get_subject,
        qos::put_subject,
        qos::delete_subject,
        events::list_events,
        events::get_event,
        events::put_event,
        events::delete_event,
        list_proxies,
        demand::next_services,
        demand::expected_arrivals,
        scaling::list_decisions,
        scaling::list_scaled,
        scaling::get_policy,
        scaling::put_policy,
        scaling::list_negotiations,
        deps::list_edges,
        deps::get_edge,
        deps::put_edge,
        deps::delete_edge,
        workflows::list_workflows,
        workflows::get_workflow,
        workflows::put_workflow,
        workflows::delete_workflow,
        scaling::service_usage
    ),
    components(schemas(
        Cluster,
        Endpoint,
        Route,
        Subject,
        QosTier,
        presage_api::RequestRecord,
        presage_api::DemandEvent,
        presage_api::RouteMatch,
        presage_api::HeaderMatch,
        QosProfile,
        ServiceSummary,
        InstanceView,
        presage_api::Forecast,
        presage_api::ForecastPoint,
        demand::LoadView,
        Point,
        ProxyStatus,
        ApiError,
        FieldError,
        Written,
        demand::NextService,
        crate::behaviour::Arrivals,
        crate::behaviour::ExpectedCalls,
        crate::autoscale::DecisionRecord,
        crate::autoscale::ServiceState,
        crate::actuate::Status,
        crate::actuate::TierResources,
        crate::autoscale::policy::Policy,
        crate::autoscale::policy::Rule,
        crate::deps::Edge,
        crate::deps::EdgeSpec,
        crate::deps::Kind,
        crate::deps::Observation,
        crate::negotiate::Negotiation,
        crate::negotiate::Exchange,
        crate::negotiate::Proposal,
        crate::negotiate::Answer,
        presage_api::Workflow,
        crate::actuate::usage::InstanceUsage,
        crate::actuate::usage::UsageForecast
    ))
)]
struct ApiDoc;

mod demand;
mod deps;
mod events;
mod input;
mod qos;
mod scaling;
mod workflows;

/// The API's router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/metrics", get(metrics))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/v1/services/{name}/instances", get(service_instances))
        .route("/v1/services/{name}/usage", get(scaling::service_usage))
        .route("/v1/services/{name}/load", get(demand::service_load))
        .route(
            "/v1/services/{name}/forecast",
            get(demand::service_forecast),
        )
        .route(
            "/v1/services/{name}/qos-statistics",
            get(qos::service_qos_statistics),
        )
        .route("/v1/alerts", get(qos::list_alerts))
        .route("/v1/events", get(events::list_events))
        .route(
            "/v1/events/{name}",
            get(events::get_event)
                .put(events::put_event)
                .delete(events::delete_event),
        )
        .route("/v1/requests/{id}", get(qos::get_request))
        .route("/v1/routes", get(list_routes))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/qos/tiers", get(qos::list_qos_tiers))
        .route(
            "/v1/qos/tiers/{name}",
            get(qos::get_qos_tier)
                .put(qos::put_qos_tier)
                .delete(qos::delete_qos_tier),
        )
        .route("/v1/qos/profiles", get(qos::list_qos_profiles))
        .route(
            "/v1/qos/profiles/{name}",
            get(qos::get_qos_profile)
                .put(qos::put_qos_profile)
                .delete(qos::delete_qos_profile),
        )
        .route("/v1/subjects", get(qos::list_subjects))
        .route(
            "/v1/subjects/{id}",
            get(qos::get_subject)
                .put(qos::put_subject)
                .delete(qos::delete_subject),
        )
        .route("/v1/workflows", get(workflows::list_workflows))
        .route(
            "/v1/workflows/{name}",
            get(workflows::get_workflow)
                .put(workflows::put_workflow)
                .delete(workflows::delete_workflow),
        )
        .route("/v1/proxies", get(list_proxies))
        .route("/v1/users/{user}/next", get(demand::next_services))
        .route("/v1/arrivals", get(demand::expected_arrivals))
        .route("/v1/decisions", get(scaling::list_decisions))
        .route("/v1/autoscaling", get(scaling::list_scaled))
        .route(
            "/v1/autoscaling/{service}/policy",
            get(scaling::get_policy).put(scaling::put_policy),
        )
        .route("/v1/negotiations", get(scaling::list_negotiations))
        .route("/v1/dependencies", get(deps::list_edges))
        .route(
            "/v1/dependencies/{from}/{to}",
            get(deps::get_edge)
                .put(deps::put_edge)
                .delete(deps::delete_edge),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: 405,
                message: "method not allowed on this path; see /openapi.json".into(),
                field: None,
                errors: Vec::new(),
            }
        })
        .with_state(api)
}

/// OpenMetrics text of the control plane's metrics.
async fn metrics(State(api): State<Api>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&api.metrics),
    )
        .into_response()
}

// === errors ===

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: u16,
    pub message: String,
    /// The first field at fault, when a field is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every field at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: message.into(),
            field: None,
            errors: Vec::new(),
        }
    }
    fn forbidden(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 403,
            message: message.into(),
            field: field.map(str::to_string),
            errors: Vec::new(),
        }
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 409,
            message: message.into(),
            field: None,
            errors: Vec::new(),
        }
    }
    fn invalid(errors: Vec<FieldError>) -> ApiError {
        let first = &errors[0];
        ApiError {
            status: 400,
            message: format!("{}: {}", first.field, first.message),
            field: Some(first.field.clone()),
            errors,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store write failed");
        ApiError {
            status: 500,
            message: e.to_string(),
            field: None,
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

// === resources, generically ===

/// Result of a write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Written {
    pub name: String,
    /// False when the stored resource was identical (nothing was pushed).
    pub changed: bool,
    /// The resource's new version.
    pub version: String,
}

fn items<T>(api: &Api, t: &str, pick: impl Fn(&Body) -> Option<&T>) -> Vec<T>
where
    T: Clone,
{
    let snap = api.resources.snapshot();
    snap.get(t)
        .map(|s| {
            s.items
                .values()
                .filter_map(|r| r.body.as_ref().and_then(&pick))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn item<T: Clone>(api: &Api, t: &str, name: &str, pick: impl Fn(&Body) -> Option<&T>) -> Option<T> {
    let snap = api.resources.snapshot();
    snap.get(t)?
        .items
        .get(name)?
        .body
        .as_ref()
        .and_then(pick)
        .cloned()
}

/// Validates, fills in the name from the path, stores and publishes.
async fn write<T>(
    api: &Api,
    name: String,
    bytes: &[u8],
    name_of: impl Fn(&mut T) -> &mut String,
    scope: impl FnOnce(&mut T) -> Result<(), ApiError>,
    check: impl Fn(&T) -> Vec<FieldError>,
    wrap: impl Fn(T) -> Body,
) -> Result<Json<Written>, ApiError>
where
    T: serde::de::DeserializeOwned,
{
    let mut value: T = body(bytes)?;
    scope(&mut value)?;
    let n = name_of(&mut value);
    if n.is_empty() {
        n.clone_from(&name);
    } else if *n != name {
        return Err(ApiError::invalid(vec![FieldError {
            field: "name".into(),
            message: format!("{n:?} differs from the name in the path, {name:?}"),
        }]));
    }
    let errors = check(&value);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    put(api, name, wrap(value)).await
}

/// Stores and publishes `body` as the resource `name`.
async fn put(api: &Api, name: String, body: Body) -> Result<Json<Written>, ApiError> {
    let resource = Resource::new(name.clone(), body);
    let version = resource.version.clone();
    let changed = api.resources.put(resource).await?;
    Ok(Json(Written {
        name,
        changed,
        version,
    }))
}

async fn remove(
    api: &Api,
    t: &'static str,
    kind: &str,
    name: &str,
) -> Result<StatusCode, ApiError> {
    if api.resources.delete(t, name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no {kind} named {name:?}")))
    }
}

fn cluster(b: &Body) -> Option<&Cluster> {
    match b {
        Body::Cluster(c) => Some(c),
        _ => None,
    }
}
fn forecast(b: &Body) -> Option<&presage_api::Forecast> {
    match b {
        Body::Forecast(f) => Some(f),
        _ => None,
    }
}
fn route(b: &Body) -> Option<&Route> {
    match b {
        Body::Route(r) => Some(r),
        _ => None,
    }
}
fn qos(b: &Body) -> Option<&QosProfile> {
    match b {
        Body::QosProfile(q) => Some(q),
        _ => None,
    }
}
fn subject(b: &Body) -> Option<&Subject> {
    match b {
        Body::Subject(s) => Some(s),
        _ => None,
    }
}

// === services ===

/// A service with its instance count and lifetime load.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    /// Requests the proxies reported for it since the control plane started (or since its
    /// history began, when restored from the store).
    pub requests_total: u64,
    pub errors_total: u64,
}

#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = [ServiceSummary])))]
async fn list_services(State(api): State<Api>) -> Json<Vec<ServiceSummary>> {
    let totals = api.load.totals();
    let list = items(&api, types::CLUSTER, cluster)
        .into_iter()
        .map(|c| {
            let (requests_total, errors_total) = totals.get(&c.name).copied().unwrap_or_default();
            ServiceSummary {
                instances: c.endpoints.len(),
                name: c.name,
                requests_total,
                errors_total,
            }
        })
        .collect();
    Json(list)
}

#[utoipa::path(get, path = "/v1/services/{name}", responses((status = 200, body = Cluster), (status = 404, body = ApiError)))]
async fn get_service(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Cluster>, ApiError> {
    item(&api, types::CLUSTER, &name, cluster)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))
}

#[utoipa::path(put, path = "/v1/services/{name}", request_body = Cluster,
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
async fn put_service(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    write(
        &api,
        name,
        &bytes,
        |c: &mut Cluster| &mut c.name,
        |_| Ok(()),
        validate::cluster,
        Body::Cluster,
    )
    .await
}

/// Deletes a service no route names (409 names those that do: proxies would refuse a
/// route to a cluster they do not know, and every later push of routes with it).
#[utoipa::path(delete, path = "/v1/services/{name}", responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_service(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let routes: Vec<String> = items(&api, types::ROUTE, route)
        .into_iter()
        .filter(|r| r.cluster == name)
        .map(|r| format!("{:?}", r.name))
        .collect();
    if !routes.is_empty() {
        return Err(ApiError::conflict(format!(
            "service {name:?} is the cluster of route {}; delete or change them first",
            routes.join(", ")
        )));
    }
    remove(&api, types::CLUSTER, "service", &name).await
}

/// An instance of a service and its health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub address: String,
    pub weight: u32,
    pub metadata: std::collections::HashMap<String, String>,
    /// Listed by the registry (live, passing) and ejected by no proxy.
    pub healthy: bool,
    /// Proxies whose outlier detection has this instance ejected now.
    pub ejected_by: Vec<String>,
    /// What the proxies measured of it over the last minute (none without traffic).
    pub measured: Option<crate::sla::windows::Summary>,
    /// The QoS expected of it next; the measured values until per-instance forecasts
    /// exist.
    pub predicted: Option<crate::sla::windows::Summary>,
    /// Measured throughput over its `capacity` metadata (requests/s), when it has one.
    pub utilisation: Option<f64>,
}

#[utoipa::path(get, path = "/v1/services/{name}/instances", responses((status = 200, body = [InstanceView]), (status = 404, body = ApiError)))]
async fn service_instances(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    let cluster = item(&api, types::CLUSTER, &name, cluster)
        .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))?;
    let now = crate::time::unix_ms();
    let views = cluster
        .endpoints
        .into_iter()
        .map(|e| {
            let ejected_by = api.ejections.ejected_by(&name, &e.address, now);
            let measured = api.sla.instance(&name, &e.address, now.div_euclid(1000));
            let capacity = crate::discovery::record::capacity(&e.metadata);
            let utilisation = measured
                .as_ref()
                .zip(capacity)
                .map(|(m, c)| m.throughput_rps / c);
            InstanceView {
                healthy: ejected_by.is_empty(),
                ejected_by,
                predicted: measured.clone(),
                measured,
                utilisation,
                address: e.address,
                weight: e.weight,
                metadata: e.metadata,
            }
        })
        .collect();
    Ok(Json(views))
}

// === routes ===

#[utoipa::path(get, path = "/v1/routes", responses((status = 200, body = [Route])))]
async fn list_routes(State(api): State<Api>) -> Json<Vec<Route>> {
    Json(items(&api, types::ROUTE, route))
}

#[utoipa::path(get, path = "/v1/routes/{name}", responses((status = 200, body = Route), (status = 404, body = ApiError)))]
async fn get_route(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Route>, ApiError> {
    item(&api, types::ROUTE, &name, route)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no route named {name:?}")))
}

#[utoipa::path(put, path = "/v1/routes/{name}", request_body = Route,
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
async fn put_route(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    write(
        &api,
        name,
        &bytes,
        |r: &mut Route| &mut r.name,
        |_| Ok(()),
        |r: &Route| {
            let mut e = validate::route(r);
            if !r.qos_profile.is_empty() && !qos::profile_exists(&api, &r.qos_profile) {
                e.push(FieldError {
                    field: "qos_profile".into(),
                    message: format!("no QoS profile named {:?}", r.qos_profile),
                });
            }
            e
        },
        Body::Route,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/routes/{name}", responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_route(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&api, types::ROUTE, "route", &name).await
}

// === proxies and users ===

#[utoipa::path(get, path = "/v1/proxies", responses((status = 200, body = [ProxyStatus])))]
async fn list_proxies(State(api): State<Api>) -> Json<Vec<ProxyStatus>> {
    Json(api.proxies.list())
}
