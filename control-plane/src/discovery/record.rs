//! A registry record: one instance of one service, as stored in a registry, and its
//! checks. Shared by every backend so "bad data" means the same thing everywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate;

/// An endpoint's `capacity` metadata: requests/s it serves, when set and positive.
pub fn capacity(metadata: &std::collections::HashMap<String, String>) -> Option<f64> {
    metadata
        .get("capacity")?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c > 0.0)
}

/// One instance, as registries store it (JSON in etcd under
/// `/presage/services/{service}/{instance}`). Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Host name or IP address.
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub zone: String,
    /// Price per hour of the instance, in any currency unit the operator uses consistently.
    #[serde(default)]
    pub price: Option<f64>,
    /// Requests per second it can take.
    #[serde(default)]
    pub capacity: Option<f64>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The instance runs behind a Presage sidecar (Kubernetes: its pod was injected):
    /// a service whose instances all do is called over mutual TLS.
    #[serde(default)]
    pub mesh: bool,
}

impl Record {
    /// An empty record for `address:port`, to fill from a registry's own format.
    pub fn at(address: impl Into<String>, port: u16) -> Record {
        Record {
            address: address.into(),
            port,
            zone: String::new(),
            price: None,
            capacity: None,
            version: String::new(),
            weight: None,
            labels: BTreeMap::new(),
            mesh: false,
        }
    }

    /// Sets a metadata field from text (`zone`, `version`, `price`, `capacity`,
    /// `weight`), as registries without JSON records carry them (Consul tags, Kubernetes
    /// annotations). `Ok(false)`: not one of these fields.
    pub fn set(&mut self, field: &str, value: &str) -> Result<bool, String> {
        fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{field}: expected a number, found {v:?}"))
        }
        match field {
            "zone" => self.zone = value.to_string(),
            "version" => self.version = value.to_string(),
            "price" => self.price = Some(number(field, value)?),
            "capacity" => self.capacity = Some(number(field, value)?),
            "weight" => self.weight = Some(number(field, value)?),
            // `presage.io/injected`, which `presage inject` puts on the pod.
            "injected" => self.mesh = value == "true",
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A checked instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub record: Record,
}

/// Why a record was skipped.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RecordError {
    pub key: String,
    pub message: String,
}

impl Instance {
    /// Parses and checks one record; `key` names it in errors.
    pub fn parse(key: &str, id: &str, json: &[u8]) -> Result<Instance, RecordError> {
        let err = |message: String| RecordError {
            key: key.to_string(),
            message,
        };
        let de = &mut serde_json::Deserializer::from_slice(json);
        let record: Record = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_path_to_error says `?` when the JSON broke before any field.
            if path == "." || path == "?" {
                err(inner.to_string())
            } else {
                err(format!("{path}: {inner}"))
            }
        })?;
        Instance::check(key, id, record)
    }

    /// Checks a record that a backend built from its registry's own format.
    pub fn check(key: &str, id: &str, mut record: Record) -> Result<Instance, RecordError> {
        let err = |message: String| RecordError {
            key: key.to_string(),
            message,
        };
        if record.port == 0 {
            return Err(err("port: expected 1..=65535, found 0".into()));
        }
        // Registries give IPv6 addresses bare (Kubernetes, Consul): bracketed here, as
        // `host:port` needs them.
        if let Ok(v6) = record.address.parse::<std::net::Ipv6Addr>() {
            record.address = format!("[{v6}]");
        }
        let a = &record.address;
        let bad_v4 = a.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && a.parse::<std::net::Ipv4Addr>().is_err();
        let bad_v6 = a.starts_with('[')
            && a.strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .is_none_or(|a| a.parse::<std::net::Ipv6Addr>().is_err());
        if a.is_empty()
            || a.contains(['/', ' '])
            || (a.contains(':') && !a.starts_with('['))
            || bad_v4
            || bad_v6
        {
            return Err(err(format!(
                "address: expected a host name or IP, found {:?}",
                record.address
            )));
        }
        // One bad record must not make the whole service's endpoints fail validation.
        let max = presage_api::MAX_ENDPOINT_WEIGHT;
        if let Some(w) = record.weight.filter(|w| *w > max) {
            return Err(err(format!("weight: expected 0..={max}, found {w}")));
        }
        let mut errors = Vec::new();
        validate::name(&mut errors, "instance", id);
        if let Some(e) = errors.first() {
            return Err(err(format!("{}: {}", e.field, e.message)));
        }
        Ok(Instance {
            id: id.to_string(),
            record,
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.record.address, self.record.port)
    }

    /// The endpoint the proxies see: metadata carries what the planner reads.
    pub fn endpoint(&self) -> presage_api::Endpoint {
        let r = &self.record;
        let mut metadata: std::collections::HashMap<String, String> = r
            .labels
            .iter()
            .map(|(k, v)| (format!("label.{k}"), v.clone()))
            .collect();
        metadata.insert("instance".into(), self.id.clone());
        // A warm-pool instance's reservation, as the proxies' interceptor reads it.
        for k in ["pool", "reserved_for"] {
            if let Some(v) = r.labels.get(k) {
                metadata.insert(k.into(), v.clone());
            }
        }
        for (k, v) in [("zone", &r.zone), ("version", &r.version)] {
            if !v.is_empty() {
                metadata.insert(k.into(), v.clone());
            }
        }
        if let Some(p) = r.price {
            metadata.insert("price".into(), p.to_string());
        }
        if let Some(c) = r.capacity {
            metadata.insert("capacity".into(), c.to_string());
        }
        presage_api::Endpoint {
            address: self.authority(),
            weight: r.weight.unwrap_or(1),
            metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_records_become_endpoints_with_metadata() {
        let i = Instance::parse(
            "/presage/services/web/a",
            "a",
            br#"{"address":"10.0.0.1","port":8080,"zone":"eu-1","price":0.12,"capacity":500,"version":"v2","labels":{"tier":"gold"}}"#,
        )
        .unwrap();
        let e = i.endpoint();
        assert_eq!(e.address, "10.0.0.1:8080");
        assert_eq!(e.metadata["zone"], "eu-1");
        assert_eq!(e.metadata["price"], "0.12");
        assert_eq!(e.metadata["label.tier"], "gold");
        assert_eq!(e.metadata["instance"], "a");
        // A bare IPv6 address, as Kubernetes and Consul give it, is bracketed.
        let v6 = Instance::parse("/k", "b", br#"{"address":"fd00::7","port":80}"#).unwrap();
        assert_eq!(v6.endpoint().address, "[fd00::7]:80");
        let mut errors = Vec::new();
        let c = presage_api::Cluster {
            name: "web".into(),
            endpoints: vec![v6.endpoint()],
            ..Default::default()
        };
        errors.extend(validate::cluster(&c));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn bad_records_name_the_key_and_the_field() {
        let cases: [(&[u8], &str); 8] = [
            (b"{not json", "/k: key must be a string"),
            (br#"{"address":"10.0.0.1"}"#, "/k: missing field `port`"),
            (
                br#"{"address":"10.0.0.1","port":80,"colour":"red"}"#,
                "/k: colour: unknown field `colour`",
            ),
            (
                br#"{"address":"10.0.0.1","port":0}"#,
                "/k: port: expected 1..=65535",
            ),
            (
                br#"{"address":"10.0.0.1","port":"80"}"#,
                "/k: port: invalid type",
            ),
            (
                br#"{"address":"10.0.0.256","port":80}"#,
                "/k: address: expected a host name or IP",
            ),
            (
                br#"{"address":"[fe80::1::2]","port":80}"#,
                "/k: address: expected a host name or IP",
            ),
            (
                br#"{"address":"10.0.0.9","port":80,"weight":20000}"#,
                "/k: weight: expected 0..=10000, found 20000",
            ),
        ];
        for (json, want) in cases {
            let err = Instance::parse("/k", "a", json).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err} (wanted {want})");
        }
    }
}
