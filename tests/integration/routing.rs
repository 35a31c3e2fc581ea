//! The routing table end to end: host, path, method and header matches, first match wins,
//! prefix rewrite, header edits both ways, and the 404 for no match.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn routing_table_first_match_wins() {
    let names = [
        "exact", "suffix", "regex", "method", "header", "rewrite", "fallback",
    ];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::spawn(n).await);
    }
    let clusters: String = ups
        .iter()
        .map(|u| {
            format!(
                "  - name: {}\n    endpoints:\n      - address: \"{}\"\n",
                u.name, u.addr
            )
        })
        .collect();
    let yaml = config(&format!(
        r#"routes:
  - name: exact-host
    match: {{ host: api.example.com, path: {{ exact: /v1/items }} }}
    cluster: exact
  - name: any-subdomain
    match: {{ host: "*.example.com" }}
    cluster: suffix
  - name: by-regex
    match: {{ path: {{ regex: "/users/[0-9]+" }} }}
    cluster: regex
  - name: deletes
    match: {{ methods: [DELETE] }}
    cluster: method
  - name: canary
    match:
      headers: [{{ name: x-canary, value: "yes" }}, {{ name: x-team, regex: "team-[a-z]+" }}]
    cluster: header
  - name: api-rewrite
    match: {{ path: {{ prefix: /api/ }} }}
    cluster: rewrite
    rewrite: {{ prefix: /internal/ }}
    request_headers: {{ add: {{ x-added: "1" }}, remove: [x-secret] }}
    response_headers: {{ add: {{ x-route: api-rewrite }}, remove: [x-upstream-only] }}
  - name: only-get-fallback
    match: {{ path: {{ prefix: / }}, methods: [GET] }}
    cluster: fallback
clusters:
{clusters}"#
    ));
    let proxy = Proxy::start(&yaml).await;
    let c = h1_client();
    let req = |method: &str, host: &str, path: &str, headers: &[(&str, &str)]| {
        let mut b = Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let service = |a: &Answer| a.json()["service"].as_str().unwrap().to_string();

    // Exact host + exact path.
    assert_eq!(
        service(&send(&c, req("GET", "API.example.com:80", "/v1/items", &[])).await),
        "exact"
    );
    // Same host, other path: falls to the suffix route (first match wins, in order).
    assert_eq!(
        service(&send(&c, req("GET", "api.example.com", "/v1/items/2", &[])).await),
        "suffix"
    );
    // The apex does not match `*.example.com`.
    assert_eq!(
        service(&send(&c, req("GET", "example.com", "/x", &[])).await),
        "fallback"
    );
    assert_eq!(
        service(&send(&c, req("GET", "h", "/users/42", &[])).await),
        "regex"
    );
    // The regex is anchored: a longer path does not match.
    assert_eq!(
        service(&send(&c, req("GET", "h", "/users/42/x", &[])).await),
        "fallback"
    );
    assert_eq!(
        service(&send(&c, req("DELETE", "h", "/x", &[])).await),
        "method"
    );
    assert_eq!(
        service(
            &send(
                &c,
                req(
                    "POST",
                    "h",
                    "/x",
                    &[("x-canary", "yes"), ("x-team", "team-a")]
                )
            )
            .await
        ),
        "header"
    );
    // Both header conditions must hold.
    let a = send(&c, req("POST", "h", "/x", &[("x-canary", "yes")])).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["x-presage-error"], "no-route");
    assert_eq!(a.body, "no route matches this request\n");

    let a = send(
        &c,
        req("GET", "h", "/api/orders?id=7", &[("x-secret", "s")]),
    )
    .await;
    let j = a.json();
    assert_eq!(j["service"], "rewrite");
    assert_eq!(j["path"], "/internal/orders?id=7");
    assert_eq!(j["headers"]["x-added"], "1");
    assert!(j["headers"].get("x-secret").is_none());
    assert_eq!(a.headers["x-route"], "api-rewrite");

    // Metrics count by route and status class.
    assert_eq!(
        proxy
            .metric(
                "presage_requests_total",
                &[("route", "-"), ("status_class", "4xx")]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "presage_requests_total",
                &[("route", "api-rewrite"), ("status_class", "2xx")]
            )
            .await,
        1.0
    );
    let m = proxy.admin_get("/metrics").await.1;
    let inf = [
        ("le", "+Inf"),
        ("route", "api-rewrite"),
        ("cluster", "rewrite"),
    ];
    assert_eq!(
        metric_sum(&m, "presage_request_duration_seconds_bucket", &inf),
        1.0,
        "{m}"
    );
    let p99 = [("route", "api-rewrite"), ("quantile", "0.99")];
    assert!(
        metric_sum(&m, "presage_request_duration_quantile_seconds", &p99) > 0.0,
        "{m}"
    );
    assert!(m.ends_with("# EOF\n"));
}

/// An absolute-form request routes by its URI's authority, and the upstream gets that
/// authority as Host, not a Host header that says otherwise (RFC 9112 §3.2.2): what the
/// request was routed (and authorised) by is what the upstream serves.
#[tokio::test]
async fn the_routed_authority_is_the_host_the_upstream_gets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (public, other) = (
        Upstream::spawn("public").await,
        Upstream::spawn("other").await,
    );
    let proxy = Proxy::start(&config(&format!(
        "routes:\n  - {{name: public, match: {{host: api.example.com}}, cluster: public}}\n  - {{name: rest, cluster: other}}\n\
         clusters:\n  - {{name: public, endpoints: [{{address: \"{}\"}}]}}\n  - {{name: other, endpoints: [{{address: \"{}\"}}]}}\n",
        public.addr, other.addr
    )))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://api.example.com/v1 HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let j: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["service"], "public", "{out}");
    assert_eq!(j["headers"]["host"], "api.example.com", "{out}");
}
