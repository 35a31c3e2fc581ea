//! Composite services over REST: definitions (YAML or JSON, the proxy config's
//! `workflows[]` schema) checked with their fields and locations named, stored, and
//! pushed to every proxy, which runs them at `POST /workflows/{name}`.

use super::*;
use presage_api::Workflow;

pub(super) fn workflow(b: &Body) -> Option<&Workflow> {
    match b {
        Body::Workflow(w) => Some(w),
        _ => None,
    }
}

/// Every stored workflow: its definition as written and the services it calls.
#[utoipa::path(get, path = "/v1/workflows", responses((status = 200, body = [Workflow])))]
pub(super) async fn list_workflows(State(api): State<Api>) -> Json<Vec<Workflow>> {
    Json(items(&api, types::WORKFLOW, workflow))
}

#[utoipa::path(get, path = "/v1/workflows/{name}",
    responses((status = 200, body = Workflow), (status = 404, body = ApiError)))]
pub(super) async fn get_workflow(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Workflow>, ApiError> {
    item(&api, types::WORKFLOW, &name, workflow)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no workflow named {name:?}")))
}

/// Creates or replaces a workflow from its definition (the request body, YAML or JSON).
/// A bad definition is a 400 naming every field at fault with its line and column, and
/// the stored one stays.
#[utoipa::path(put, path = "/v1/workflows/{name}", request_body(content = String,
    description = "the workflow, YAML or JSON", content_type = "application/yaml"),
    responses((status = 200, body = Written), (status = 400, body = ApiError)))]
pub(super) async fn put_workflow(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Written>, ApiError> {
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::invalid(vec![FieldError {
            field: "(body)".into(),
            message: format!("not UTF-8: {e}"),
        }])
    })?;
    let mut errors = Vec::new();
    validate::name(&mut errors, "name", &name);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let stored = items(&api, types::WORKFLOW, workflow);
    let profiles = items(&api, types::QOS_PROFILE, qos);
    let names = profiles.iter().map(|p| p.name.as_str()).collect();
    let w =
        crate::workflows::check(&name, text, &stored, Some(&names)).map_err(ApiError::invalid)?;
    put(&api, name, Body::Workflow(w)).await
}

/// Deletes a workflow no other workflow runs as a step (409 names those that do).
#[utoipa::path(delete, path = "/v1/workflows/{name}",
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(super) async fn delete_workflow(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let stored = items(&api, types::WORKFLOW, workflow);
    let callers = crate::workflows::callers(&name, &stored);
    if !callers.is_empty() {
        return Err(ApiError::conflict(format!(
            "workflow {name:?} is run as a step by {}",
            callers.join(", ")
        )));
    }
    remove(&api, types::WORKFLOW, "workflow", &name).await
}
