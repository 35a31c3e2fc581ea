//! A workflow step's call to a constituent service through the mesh: the cluster's
//! balancer picks the instance (meeting the step's QoS profile where one can), outlier
//! detection and the endpoint's load see the attempt, and the caller's request id, QoS
//! profile, user and what is left of the deadline go upstream with it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Map, Value};

use super::run::{Failure, Run, Vars};
use crate::body::RequestBody;
use crate::config::{Call, Step};
use crate::errors::ProxyError;
use crate::headers::X_REQUEST_ID;
use crate::qos;
use crate::upstream::Outcome;
use presage_workflow::expr;

impl Run {
    /// Sends the step's call; its answer is kept as `steps.<name>`, and its body returned.
    pub(super) async fn call(&self, s: &Step, c: &Call, vars: &Vars) -> Result<Value, Failure> {
        let fail = |m: String| Failure::at(&s.name, m);
        let cluster = self
            .rt
            .clusters
            .get(&c.service)
            .ok_or_else(|| fail(format!("unknown service {:?}", c.service)))?;
        let ctx = self.context(vars);
        let path = expr::render(&c.path, &ctx).map_err(|m| fail(format!("path: {m}")))?;
        let path: PathAndQuery = path
            .parse()
            .map_err(|e| fail(format!("path {path:?} is not a valid path: {e}")))?;
        let body = match &c.body {
            Some(b) => Some(expr::render(b, &ctx).map_err(|m| fail(format!("body: {m}")))?),
            None => None,
        };
        let profile = s
            .qos_profile
            .as_ref()
            .and_then(|n| self.rt.qos.profiles.get(n))
            .or(self.profile.as_ref());
        if cluster.spec.degraded == Some(crate::config::Degraded::BestEffort)
            && self.rt.degraded_for(&cluster.spec)
        {
            return Err(fail(ProxyError::Degraded(c.service.clone()).to_string()));
        }
        let (ep, _) = cluster
            .balancer
            .pick_for(
                &cluster.endpoints,
                None,
                profile.and_then(|p| p.needs.as_ref()),
            )
            .ok_or_else(|| fail(ProxyError::NoEndpoint(c.service.clone()).to_string()))?;

        let mut up = Request::new(RequestBody::Bytes {
            data: body.map(Bytes::from),
        });
        *up.method_mut() = c.method.clone();
        *up.uri_mut() = crate::rewrite::endpoint_uri(ep, &path).map_err(|e| fail(e.to_string()))?;
        *up.version_mut() = crate::rewrite::upstream_version(cluster);
        let h = up.headers_mut();
        for (name, template) in &c.headers {
            let v =
                expr::render(template, &ctx).map_err(|m| fail(format!("header {name}: {m}")))?;
            let v = HeaderValue::from_str(&v)
                .map_err(|e| fail(format!("header {name} value {v:?}: {e}")))?;
            h.insert(name.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(ep.spec.authority.as_str()) {
            h.insert(HOST, v);
        }
        if c.body.is_some() && !h.contains_key(CONTENT_TYPE) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        h.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(p) = profile {
            if let Ok(v) = HeaderValue::from_str(&p.spec.name) {
                h.insert(qos::X_PRESAGE_QOS.clone(), v);
            }
        }
        if let Some(u) = self
            .user
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            h.insert(qos::X_PRESAGE_USER.clone(), u);
        }
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        h.insert(
            qos::X_PRESAGE_TIMEOUT_MS.clone(),
            HeaderValue::from(left.as_millis() as u64),
        );
        // The behaviour profiler learns the constituents a user's composite call makes.
        if let (Some(t), Some(u)) = (&self.shared.telemetry, &self.user) {
            t.transition(u, &c.service);
        }

        let tried = crate::attempt::send(cluster, ep, up, self.shared.telemetry.is_some()).await;
        let res = match tried.res {
            Ok(res) => res,
            Err(err) => {
                cluster.record(ep, Outcome::failed(&err));
                self.set(&s.name, json!({ "status": null, "error": err.to_string() }));
                return Err(fail(format!("{}: {err}", c.service)));
            }
        };
        let status = res.status();
        cluster.record(
            ep,
            if status.is_server_error() {
                Outcome::ServerError(tried.rtt)
            } else {
                Outcome::Success(tried.rtt)
            },
        );
        let (parts, body) = res.into_parts();
        let limit = self.rt.config.limits.max_body_bytes as usize;
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| fail(format!("{}: reading the answer: {e}", c.service)))?
            .to_bytes();
        let body = parse_body(&parts.headers, &bytes);
        let headers: Map<String, Value> = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
            .collect();
        self.set(
            &s.name,
            json!({ "status": status.as_u16(), "body": body, "headers": headers }),
        );
        if status.is_server_error() {
            return Err(fail(format!("{} answered {status}", c.service)));
        }
        Ok(body)
    }
}

/// JSON when it says so (or looks so), else text.
pub(super) fn parse_body(headers: &http::HeaderMap, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let json_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let looks = matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if json_type || looks {
        if let Ok(v) = serde_json::from_slice(bytes) {
            return v;
        }
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}
