//! The dependency map over REST: the merged edges (manual and discovered), and CRUD of
//! the manual ones.

use super::*;
use crate::deps::{Edge, EdgeSpec};
use crate::resources::blocking;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct EdgesQuery {
    /// Only the edges from or to this service.
    service: Option<String>,
}

/// The dependency map: each edge's kind and ratio (calls per request of the caller),
/// whether an operator set it, telemetry discovered it, or both, and for a discovered
/// edge its observation window.
#[utoipa::path(get, path = "/v1/dependencies", params(EdgesQuery),
    responses((status = 200, body = [Edge]), (status = 400, body = ApiError)))]
pub(super) async fn list_edges(
    State(api): State<Api>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<Edge>>, ApiError> {
    let q: EdgesQuery = query(q)?;
    let mut edges = api.deps.edges(crate::time::unix_ms());
    if let Some(s) = q.service {
        edges.retain(|e| e.from == s || e.to == s);
    }
    Ok(Json(edges))
}

/// One edge of the map.
#[utoipa::path(get, path = "/v1/dependencies/{from}/{to}",
    responses((status = 200, body = Edge), (status = 404, body = ApiError)))]
pub(super) async fn get_edge(
    State(api): State<Api>,
    Path((from, to)): Path<(String, String)>,
) -> Result<Json<Edge>, ApiError> {
    api.deps
        .edges(crate::time::unix_ms())
        .into_iter()
        .find(|e| e.from == from && e.to == to)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no dependency {from:?} -> {to:?}")))
}

/// Sets a manual edge (kept in the store): its kind and ratio win over what telemetry
/// discovers.
#[utoipa::path(put, path = "/v1/dependencies/{from}/{to}", request_body = EdgeSpec,
    responses((status = 200, body = Edge), (status = 400, body = ApiError)))]
pub(super) async fn put_edge(
    State(api): State<Api>,
    Path((from, to)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Edge>, ApiError> {
    let spec: EdgeSpec = body(&bytes)?;
    let deps = api.deps.clone();
    let (f, t) = (from.clone(), to.clone());
    blocking(move || deps.put(&f, &t, spec))
        .await?
        .map_err(ApiError::invalid)?;
    get_edge(State(api), Path((from, to))).await
}

/// Forgets a manual edge; a discovered one stays while telemetry sees it.
#[utoipa::path(delete, path = "/v1/dependencies/{from}/{to}",
    responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn delete_edge(
    State(api): State<Api>,
    Path((from, to)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let deps = api.deps.clone();
    let (f, t) = (from.clone(), to.clone());
    if blocking(move || deps.delete(&f, &t)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no manual dependency {from:?} -> {to:?}"
        )))
    }
}
