//! The events calendar over REST: known changes in demand that forecasts apply (see
//! `crate::events`).

use super::*;
use presage_api::DemandEvent;

fn event(b: &Body) -> Option<&DemandEvent> {
    match b {
        Body::DemandEvent(e) => Some(e),
        _ => None,
    }
}

/// The events calendar, soonest first.
#[utoipa::path(get, path = "/v1/events", responses((status = 200, body = [DemandEvent])))]
pub(super) async fn list_events(State(api): State<Api>) -> Json<Vec<DemandEvent>> {
    let mut list = items(&api, types::DEMAND_EVENT, event);
    list.sort_by(|a, b| (a.start_unix_ms, &a.name).cmp(&(b.start_unix_ms, &b.name)));
    Json(list)
}

#[utoipa::path(get, path = "/v1/events/{name}", responses((status = 200, body = DemandEvent), (status = 404, body = ApiError)))]
pub(super) async fn get_event(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<DemandEvent>, ApiError> {
    item(&api, types::DEMAND_EVENT, &name, event)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no event named {name:?}")))
}

/// Registers or changes an event: during `[start_unix_ms, end_unix_ms)` the forecasts
/// of `service` (every service when empty) are multiplied by `multiplier` (default 1),
/// then raised by `added_rps`. Forecasts take it at their next refresh.
#[utoipa::path(put, path = "/v1/events/{name}", request_body = DemandEvent,
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
pub(super) async fn put_event(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    write(
        &api,
        name,
        &bytes,
        |e: &mut DemandEvent| &mut e.name,
        |_| Ok(()),
        validate::demand_event,
        Body::DemandEvent,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/events/{name}", responses((status = 204), (status = 404, body = ApiError)))]
pub(super) async fn delete_event(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&api, types::DEMAND_EVENT, "event", &name).await
}
