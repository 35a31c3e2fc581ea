//! The proxy config's `workflows:` (composite services; schema and validation in
//! `presage_workflow::spec`), checked against the file's clusters and QoS profiles.

use std::collections::HashSet;
use std::sync::Arc;

use presage_workflow::{Known, WorkflowSpec};

use super::raw::RawConfig;
use super::Builder;

impl Builder<'_> {
    pub(super) fn workflows(
        &mut self,
        raw: &RawConfig,
        clusters: &HashSet<&str>,
        profiles: &HashSet<&str>,
    ) -> Vec<Arc<WorkflowSpec>> {
        let known = Known {
            // With a control plane, clusters arrive later: an unknown one fails the call.
            clusters: raw.control_plane.is_none().then_some(clusters),
            profiles: Some(profiles),
        };
        match presage_workflow::build(&raw.workflows, Some("workflows"), &known) {
            Ok(specs) => specs,
            Err(problems) => {
                for p in problems {
                    self.err(p.at, p.field, p.message);
                }
                Vec::new()
            }
        }
    }
}
