use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, "t.yaml", None) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = "
listeners:
  - address: 127.0.0.1:0
routes:
  - cluster: a
clusters:
  - name: a
    endpoints:
      - address: 127.0.0.1:9000
";

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(GOOD, "t.yaml", None).unwrap();
    assert_eq!(c.listeners[0].name, "listener0");
    assert_eq!(c.routes[0].name, "route0");
    assert_eq!(c.routes[0].timeout, defaults::REQUEST_TIMEOUT);
    assert_eq!(c.clusters[0].endpoints[0].weight, 1);
    assert_eq!(c.limits.max_headers, defaults::MAX_HEADERS);
}

#[test]
fn unknown_field_is_named_with_its_location() {
    let e = errors("listeners:\n  - address: 127.0.0.1:0\n    adress: x\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with(
            "t.yaml:3:5: listeners[0].adress: unknown field `adress`, expected one of"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn bad_duration_points_at_the_value() {
    let yaml = GOOD.replace("  - cluster: a\n", "  - cluster: a\n    timeout: soon\n");
    let e = errors(&yaml);
    assert!(
        e[0].starts_with("t.yaml:6:14: routes[0].timeout: expected a duration"),
        "{}",
        e[0]
    );
}

#[test]
fn bad_regex_is_rejected_while_parsing() {
    let yaml = GOOD.replace(
        "  - cluster: a\n",
        "  - cluster: a\n    match: { path: { regex: \"(\" } }\n",
    );
    let e = errors(&yaml);
    assert!(
        e[0].contains("routes[0].match.path.regex")
            && e[0].contains("expected a regular expression"),
        "{}",
        e[0]
    );
}

#[test]
fn every_semantic_error_is_reported_with_location() {
    let yaml = "
routes:
  - cluster: missing
  - cluster: a
    rewrite: { prefix: /x }
clusters:
  - name: a
    endpoints: []
  - name: a
    endpoints:
      - address: 127.0.0.1:1
        weight: 0
";
    let e = errors(yaml);
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.yaml:3:14: routes[0].cluster: no cluster named \"missing\"")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("routes[1].rewrite.prefix: a prefix rewrite needs")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.yaml:9:11: clusters[1].name: duplicate cluster name")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("clusters[0].endpoints: expected at least one endpoint")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("clusters[1].endpoints[0].weight: expected 1..=10000, found 0")),
        "{e:#?}"
    );
}

#[test]
fn missing_tls_file_is_reported_at_its_field() {
    let yaml = GOOD.replace(
        "  - address: 127.0.0.1:0\n",
        "  - address: 127.0.0.1:0\n    tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }\n",
    );
    let e = errors(&yaml);
    assert!(
        e[0].starts_with("t.yaml:4:18: listeners[0].tls.cert: cannot read /nonexistent/c.pem"),
        "{e:#?}"
    );
}

/// The weighted round robin's table is as long as the weights added up: a weight of
/// billions would take the proxy's memory at the next reload.
#[test]
fn endpoint_weights_are_bounded() {
    let e = errors(&GOOD.replace(
        "      - address: 127.0.0.1:9000\n",
        "      - address: 127.0.0.1:9000\n        weight: 4000000000\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].ends_with("clusters[0].endpoints[0].weight: expected 1..=10000, found 4000000000"),
        "{e:#?}"
    );
}

#[test]
fn the_ejected_share_is_a_percentage() {
    let e = errors(&GOOD.replace(
        "    endpoints:\n",
        "    outlier_detection:\n      max_ejection_percent: 150\n    endpoints:\n",
    ));
    assert_eq!(
        e,
        ["t.yaml:9:29: clusters[0].outlier_detection.max_ejection_percent: expected 0..=100, found 150"]
    );
}

/// The default believes the `x-presage-*` headers of internal callers only.
#[test]
fn internal_callers_are_loopback_private_and_link_local() {
    let internal = QosHeaders::default();
    let here: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let trusts = |q: QosHeaders, ip: &str| q.trusts(ip.parse().unwrap(), here);
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        // This host's own public address: a pod's application calling its sidecar.
        "203.0.113.7",
        "::ffff:203.0.113.7",
    ] {
        assert!(trusts(internal, ip), "{ip}");
    }
    for ip in [
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2001:db8::1",
        "::ffff:8.8.8.8",
    ] {
        assert!(!trusts(internal, ip), "{ip}");
    }
    assert!(trusts(QosHeaders::All, "8.8.8.8"));
    assert!(!trusts(QosHeaders::None, "127.0.0.1"));
    let c = parse(
        &GOOD.replace(
            "  - address: 127.0.0.1:0\n",
            "  - address: 127.0.0.1:0\n    qos_headers: all\n",
        ),
        "t.yaml",
        None,
    )
    .unwrap();
    assert_eq!(c.listeners[0].qos_headers, QosHeaders::All);
}

/// An idle limit of centuries would overflow the timers set from it.
#[test]
fn idle_timeouts_are_at_most_a_year() {
    let e = errors(&GOOD.replace(
        "    endpoints:\n",
        "    idle_timeout: 300000000000y\n    endpoints:\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].ends_with("clusters[0].idle_timeout: expected at most a year (0s: no limit)"),
        "{e:#?}"
    );
}

#[test]
fn endpoint_without_port_is_rejected() {
    let yaml = GOOD.replace("127.0.0.1:9000", "example.com");
    let e = errors(&yaml);
    assert!(
        e[0].contains("clusters[0].endpoints[0].address: expected host:port")
            && e[0].contains("port is missing"),
        "{}",
        e[0]
    );
}

#[test]
fn one_liner_round_trips_through_the_parser() {
    let yaml = one_liner(
        "127.0.0.1:8080".parse().unwrap(),
        &"http://127.0.0.1:9000/api".parse().unwrap(),
        None,
    )
    .unwrap();
    let c = parse(&yaml, "<command line>", None).unwrap();
    assert_eq!(
        c.clusters[0].endpoints[0].authority.as_str(),
        "127.0.0.1:9000"
    );
    assert_eq!(
        c.routes[0].rewrite_prefix,
        Some(("/".into(), "/api/".into()))
    );
    assert!(one_liner(
        "127.0.0.1:8080".parse().unwrap(),
        &"ftp://x:1".parse().unwrap(),
        None
    )
    .is_err());
}

#[test]
fn tiers_can_be_changed_and_added_and_stay_ordered_by_priority() {
    let yaml = format!(
        "{GOOD}qos_tiers:
  - {{name: diamond, priority: 10, admission_share: 1.0}}
  - {{name: free, priority: 0, admission_share: 0.4, bandwidth_max_mbps: 8}}
  - {{name: platinum, admission_share: 0.95}}
qos_profiles:
  - {{name: vip, tier: diamond}}
  - {{name: plain}}
subjects:
  - {{id: trial, tier: free}}
default_tier: free
"
    );
    let c = parse(&yaml, "t.yaml", None).unwrap();
    let names: Vec<&str> = c.tiers.iter().map(|t| &*t.name).collect();
    assert_eq!(
        names,
        ["free", "bronze", "silver", "gold", "platinum", "diamond"]
    );
    assert_eq!(c.tier(c.default_tier).name.as_ref(), "free");
    assert_eq!(c.tier(c.default_tier).bandwidth, 1_000_000.0);
    assert_eq!(c.tier(c.qos_profiles[0].tier).name.as_ref(), "diamond");
    assert_eq!(
        c.tier(c.qos_profiles[1].tier).name.as_ref(),
        "bronze",
        "a profile without a tier is bronze"
    );
    assert_eq!(c.tier(c.subjects[0].tier.unwrap()).name.as_ref(), "free");
    assert_eq!(c.tiers[4].admission_share, 0.95);
}

#[test]
fn bad_tiers_and_tier_references_are_rejected_with_their_location() {
    let e = errors(&format!(
        "{GOOD}qos_tiers:
  - {{name: diamond, admission_share: 1.0}}
  - {{name: cheap, priority: 5, admission_share: 0.9}}
  - {{name: Bad Name, priority: 7, admission_share: 1.0}}
qos_profiles:
  - {{name: vip, tier: titanium}}
"
    ));
    let want = [
        "t.yaml:11:12: qos_tiers[0].priority: the new tier \"diamond\" needs a priority and an admission_share",
        "t.yaml:13:12: qos_tiers[2].name: expected 1-63 characters",
        "t.yaml:12:12: qos_tiers[1].admission_share: platinum (1) would exceed cheap (0.9)",
        "t.yaml:15:23: qos_profiles[0].tier: unknown QoS tier \"titanium\"; known: bronze, silver, gold, platinum, cheap",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for w in want {
        assert!(e.iter().any(|e| e.starts_with(w)), "{w}\nin {e:#?}");
    }
}

/// Out-of-range numbers would overflow the durations the request path derives from
/// them (a profile's hedge delay and deadline, a rate limit's wait, a tier's pacing).
#[test]
fn qos_numbers_out_of_range_are_rejected_with_their_location() {
    let e = errors(&format!(
        "{GOOD}qos_tiers:
  - {{name: silver, bandwidth_max_mbps: 1e-300}}
qos_profiles:
  - {{name: a, reliability: 0.999, latency_p99_ms: 1e23}}
  - {{name: b, deadline_ms: 1e23, rate_limit_rps: 1e-30}}
  - {{name: c, latency_p99_ms: 86400000, rate_limit_rps: 0.001, deadline_ms: 0}}
"
    ));
    let want = [
        "t.yaml:11:40: qos_tiers[0].bandwidth_max_mbps: expected 0 (no cap) or megabits per second in 0.001..=1000000, found 1e-300",
        "t.yaml:13:51: qos_profiles[0].latency_p99_ms: expected milliseconds in 0..=86400000, found 1e23",
        "t.yaml:14:28: qos_profiles[1].deadline_ms: expected milliseconds",
        "t.yaml:14:50: qos_profiles[1].rate_limit_rps: expected 0 (no limit) or a rate in 0.001..=1000000000, found 1e-30",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for w in want {
        assert!(e.iter().any(|e| e.starts_with(w)), "{w}\nin {e:#?}");
    }
}

#[test]
fn shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        // demo.yaml is the control plane's (checked in presage-control-plane).
        if p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("demo.yaml") {
            load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n > 0);
}

mod dynamic_resources {
    use super::super::dynamic::Dynamic;
    use super::super::parse_with;
    use presage_api::{resource::Body, Cluster, Endpoint, Resource, Route, RouteMatch};

    const STATIC: &str = "routes:\n  - name: static\n    match: { path: { exact: /s } }\n    cluster: local\nclusters:\n  - name: local\n    endpoints: [{address: \"127.0.0.1:1\"}]\n";

    fn cluster(name: &str, addr: &str) -> Resource {
        Resource::new(
            name,
            Body::Cluster(Cluster {
                name: name.into(),
                endpoints: vec![Endpoint {
                    address: addr.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        )
    }

    fn route(name: &str, order: i32, cluster: &str) -> Resource {
        Resource::new(
            name,
            Body::Route(Route {
                name: name.into(),
                order,
                cluster: cluster.into(),
                r#match: Some(RouteMatch {
                    path_prefix: format!("/{name}"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    }

    fn dynamic(items: Vec<Resource>) -> Dynamic {
        let mut d = Dynamic::default();
        for r in items {
            let t = r.body.as_ref().unwrap().type_url();
            d.apply(t, vec![r], &[]);
        }
        d
    }

    #[test]
    fn dynamic_routes_follow_static_ones_in_order_then_name() {
        let d = dynamic(vec![
            cluster("web", "127.0.0.1:2"),
            route("b", 5, "web"),
            route("a", 5, "web"),
            route("z", 1, "local"),
        ]);
        let c = parse_with(STATIC, "p.yaml", None, &d).unwrap();
        let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["static", "z", "a", "b"]);
        assert_eq!(c.clusters.len(), 2);
    }

    #[test]
    fn errors_name_the_dynamic_resource_and_field() {
        let d = dynamic(vec![route("r", 0, "nope")]);
        let err = parse_with(STATIC, "p.yaml", None, &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("route \"r\": cluster: no cluster named \"nope\""),
            "{err}"
        );

        let d = dynamic(vec![cluster("local", "127.0.0.1:3")]);
        let err = parse_with(STATIC, "p.yaml", None, &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cluster \"local\": name: duplicate cluster name"),
            "{err}"
        );

        let d = dynamic(vec![cluster("web", "not an address")]);
        let err = parse_with(STATIC, "p.yaml", None, &d)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cluster \"web\": endpoints[0].address: expected host:port"),
            "{err}"
        );
    }

    #[test]
    fn removal_takes_a_resource_out() {
        let mut d = dynamic(vec![cluster("web", "127.0.0.1:2"), route("w", 0, "web")]);
        d.apply(presage_api::types::ROUTE, vec![], &["w".to_string()]);
        assert!(d.routes.is_empty());
        assert!(d.versions(presage_api::types::ROUTE).is_empty());
        assert_eq!(d.versions(presage_api::types::CLUSTER).len(), 1);
    }

    #[test]
    fn the_control_plane_address_must_be_plain_http() {
        let err = super::super::parse(
            "control_plane:\n  address: https://cp:9902\n",
            "p.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("p.yaml:2:12: control_plane.address: expected a URL"),
            "{err}"
        );
    }
}

#[test]
fn mesh_tls_needs_an_identity_and_no_ca_of_its_own() {
    let mesh = GOOD.replace("  - name: a\n", "  - name: a\n    tls: {mesh: true}\n");
    let e = errors(&mesh);
    assert!(
        e[0].contains("clusters[0].tls.mesh: mesh TLS needs a workload certificate"),
        "{e:?}"
    );
    let with_identity = format!(
        "{mesh}control_plane:\n  address: http://127.0.0.1:9902\n  identity: {{namespace: shop, service_account: web}}\n"
    );
    let c = parse(&with_identity, "t.yaml", None).unwrap();
    let tls = c.clusters[0].tls.as_ref().unwrap();
    assert!(tls.mesh);
    assert_eq!(tls.server_name.as_deref(), Some(crate::identity::MESH_SNI));
    let id = c.control_plane.unwrap().identity.unwrap();
    assert_eq!(
        (id.namespace.as_str(), id.service_account.as_str()),
        ("shop", "web")
    );
    let e = errors(&with_identity.replace("namespace: shop", "namespace: Shop"));
    assert!(
        e[0].starts_with(
            "t.yaml:13:25: control_plane.identity.namespace: expected a Kubernetes name"
        ),
        "{e:?}"
    );
}

#[test]
fn authorization_rules_are_checked_with_their_location() {
    let yaml = GOOD.replace(
        "  - address: 127.0.0.1:0\n",
        "  - address: 127.0.0.1:0\n    authorization:\n      - match: {path: {prefix: /admin}}\n        allow: [\"spiffe://td/ns/ops/*\", \"ops\"]\n      - match: {methods: [GET]}\n",
    );
    let e = errors(&yaml);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(
            "t.yaml:6:41: listeners[0].authorization[0].allow[1]: expected a SPIFFE ID"
        ),
        "{e:?}"
    );
    assert!(
        e[1].contains("listeners[0].authorization[1]: a rule needs `allow` or `deny`"),
        "{e:?}"
    );
}
