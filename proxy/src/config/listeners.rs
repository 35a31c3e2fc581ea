//! Building a config's listeners: addresses, TLS termination, transparent capture and
//! the authorization rules on callers' mesh identities; and the mesh TLS of clusters.

use std::collections::HashSet;

use crate::authz::{AuthzRule, IdentityPattern};

use super::raw::{self, RawConfig};
use super::*;

impl Builder<'_> {
    pub(super) fn listeners(&mut self, raw: &RawConfig) -> Vec<Listener> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
            if !seen.insert(name.clone()) {
                self.err(
                    Location::UNKNOWN,
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {name:?}"),
                );
            }
            let tls = l.tls.as_ref().and_then(|t| {
                let cert = self.read(&t.cert, format!("listeners[{i}].tls.cert"))?;
                let key = self.read(&t.key, format!("listeners[{i}].tls.key"))?;
                match tls::server_config(&cert, &key) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.err(
                            t.cert.referenced,
                            format!("listeners[{i}].tls"),
                            e.to_string(),
                        );
                        None
                    }
                }
            });
            let transparent = l.transparent.as_ref().is_some_and(|t| t.value);
            if transparent && l.tls.is_some() {
                let at = l
                    .transparent
                    .as_ref()
                    .map_or(Location::UNKNOWN, |t| t.referenced);
                self.err(
                    at,
                    format!("listeners[{i}].transparent"),
                    "a transparent listener takes the pod's own plain traffic; it cannot terminate TLS",
                );
            }
            if l.inbound && !transparent {
                self.err(
                    Location::UNKNOWN,
                    format!("listeners[{i}].inbound"),
                    "an inbound listener takes redirected traffic: it needs `transparent: true`",
                );
            }
            let authorization = self.authorization(i, l);
            out.push(Listener {
                name,
                address: l.address,
                tls,
                transparent,
                inbound: l.inbound,
                authorization,
                qos_headers: l.qos_headers,
            });
        }
        out
    }

    fn authorization(&mut self, i: usize, l: &raw::RawListener) -> Vec<AuthzRule> {
        let mut rules = Vec::new();
        for (j, r) in l.authorization.iter().enumerate() {
            let at = format!("listeners[{i}].authorization[{j}]");
            let matcher = self.matcher(&r.matcher, &format!("{at}.match"));
            let mut patterns = |list: &[Spanned<String>], field: &str| {
                let mut out = Vec::new();
                for (k, p) in list.iter().enumerate() {
                    match IdentityPattern::parse(&p.value) {
                        Ok(p) => out.push(p),
                        Err(e) => self.err(p.referenced, format!("{at}.{field}[{k}]"), e),
                    }
                }
                out
            };
            let allow = patterns(&r.allow, "allow");
            let deny = patterns(&r.deny, "deny");
            if allow.is_empty() && deny.is_empty() && r.allow.is_empty() && r.deny.is_empty() {
                self.err(
                    Location::UNKNOWN,
                    at.clone(),
                    "a rule needs `allow` or `deny` identities",
                );
            }
            rules.push(AuthzRule {
                matcher,
                allow,
                deny,
            });
        }
        rules
    }

    /// A cluster of mesh sidecars: the workload certificate's TLS, SNI `MESH_SNI`.
    pub(super) fn mesh_tls(
        &mut self,
        raw: &RawConfig,
        t: &raw::RawClientTls,
        f: &dyn Fn(&str) -> String,
    ) -> Option<ClientTlsSpec> {
        if t.ca.is_some() || t.server_name.is_some() {
            let at = t.ca.as_ref().map_or(Location::UNKNOWN, |c| c.referenced);
            self.err(
                at,
                f("tls.mesh"),
                "mesh TLS checks peers against the mesh CA by identity: leave out `ca` and `server_name`",
            );
        }
        if raw
            .control_plane
            .as_ref()
            .is_none_or(|c| c.identity.is_none())
        {
            self.err(
                Location::UNKNOWN,
                f("tls.mesh"),
                "mesh TLS needs a workload certificate: set `control_plane.identity`",
            );
            return None;
        }
        Some(ClientTlsSpec {
            ca_pem: None,
            server_name: Some(crate::identity::MESH_SNI.to_string()),
            config: crate::identity::client_config(),
            mesh: true,
        })
    }
}
