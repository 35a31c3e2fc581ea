//! Demand over REST: each service's load history and forecasts, and the behaviour
//! profiler's predictions (a user's next services, the arrivals users are expected to
//! bring).

use super::*;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct LoadQuery {
    /// `1s` or `1m`; default `1s`. Load: the last hour or the last week. Forecast: the
    /// next minute or the next hour.
    resolution: Option<String>,
}

/// Whether a `resolution` query asks for minutes.
fn minutes(q: LoadQuery) -> Result<bool, ApiError> {
    match q.resolution.as_deref() {
        None | Some("1s") => Ok(false),
        Some("1m") => Ok(true),
        Some(other) => Err(ApiError::invalid(vec![FieldError {
            field: "resolution".into(),
            message: format!("expected 1s or 1m, found {other:?}"),
        }])),
    }
}

/// A service's load history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoadView {
    pub service: String,
    pub resolution_seconds: u32,
    pub requests_total: u64,
    pub errors_total: u64,
    pub points: Vec<Point>,
}

#[utoipa::path(get, path = "/v1/services/{name}/load", params(LoadQuery),
    responses((status = 200, body = LoadView), (status = 400, body = ApiError)))]
pub(super) async fn service_load(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<LoadView>, ApiError> {
    let minutes = minutes(query::<LoadQuery>(q)?)?;
    let now_s = crate::time::unix_ms() / 1000;
    let view = api.load.with(&name, now_s, |h| LoadView {
        service: name.clone(),
        resolution_seconds: if minutes { 60 } else { 1 },
        requests_total: h.map_or(0, |h| h.requests_total),
        errors_total: h.map_or(0, |h| h.errors_total),
        points: match h {
            None => Vec::new(),
            Some(h) if minutes => h.minutes().copied().collect(),
            Some(h) => h.seconds().copied().collect(),
        },
    });
    Ok(Json(view))
}

#[utoipa::path(get, path = "/v1/services/{name}/forecast", params(LoadQuery),
    responses((status = 200, body = presage_api::Forecast), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn service_forecast(
    State(api): State<Api>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<presage_api::Forecast>, ApiError> {
    let (key, needs) = if minutes(query::<LoadQuery>(q)?)? {
        (
            format!("{name}{}", crate::predict::MINUTES.suffix),
            "half an hour to six hours",
        )
    } else {
        (name.clone(), "about half a minute")
    };
    item(&api, types::FORECAST, &key, forecast)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no forecast for {name:?} at this resolution yet (it needs {needs} of telemetry)"
            ))
        })
}

/// A predicted next service.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NextService {
    pub service: String,
    pub probability: f64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct ArrivalsQuery {
    /// The window ahead, e.g. `60s`, `10m` (1 s to 1 h, default 60 s).
    window: Option<String>,
}

/// Calls the users seen recently are expected to make in the next window, per service
/// (the behaviour profiler's demand, beside the per-service forecast).
#[utoipa::path(get, path = "/v1/arrivals", params(ArrivalsQuery),
    responses((status = 200, body = crate::behaviour::Arrivals), (status = 400, body = ApiError)))]
pub(super) async fn expected_arrivals(
    State(api): State<Api>,
    RawQuery(q): RawQuery,
) -> Result<Json<crate::behaviour::Arrivals>, ApiError> {
    let window = match query::<ArrivalsQuery>(q)?.window {
        None => std::time::Duration::from_secs(60),
        Some(w) => humantime::parse_duration(&w)
            .ok()
            .filter(|d| (1..=3600).contains(&d.as_secs()))
            .ok_or_else(|| {
                ApiError::invalid(vec![FieldError {
                    field: "window".into(),
                    message: format!("expected a duration from 1s to 1h, found {w:?}"),
                }])
            })?,
    };
    let now = crate::time::unix_ms() as f64 / 1000.0;
    let p = api.profiler.lock().expect("profiler lock poisoned");
    Ok(Json(p.expected_arrivals(now, window.as_secs_f64())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct NextQuery {
    /// How many services to return (1-20, default 3).
    k: Option<usize>,
}

#[utoipa::path(get, path = "/v1/users/{user}/next", params(NextQuery),
    responses((status = 200, body = [NextService]), (status = 400, body = ApiError)))]
pub(super) async fn next_services(
    State(api): State<Api>,
    Path(user): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<NextService>>, ApiError> {
    let k = query::<NextQuery>(q)?.k.unwrap_or(3);
    if !(1..=20).contains(&k) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "k".into(),
            message: format!("expected 1..=20, found {k}"),
        }]));
    }
    let p = api.profiler.lock().expect("profiler lock poisoned");
    Ok(Json(
        p.predict(&user, k)
            .into_iter()
            .map(|p| NextService {
                service: p.service,
                probability: p.probability,
            })
            .collect(),
    ))
}
