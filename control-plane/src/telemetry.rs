//! The telemetry stream's server side: each proxy streams load reports; counts and
//! latency go to `Load`, sampled user transitions to the behaviour profiler, calls
//! between services to the dependency map.

use std::sync::{Arc, Mutex};

use presage_api::telemetry_server::Telemetry;
use presage_api::{LoadReport, ReportSummary};
use tonic::{Request, Response, Status, Streaming};

use crate::behaviour::Profiler;
use crate::health::Ejections;
use crate::load::Load;
use crate::proxies::Proxies;

#[derive(Debug, Clone)]
pub struct TelemetryService {
    pub load: Arc<Load>,
    /// Per-profile entries, for SLA monitoring.
    pub sla: Arc<crate::sla::Sla>,
    /// Request records, for `/v1/requests/{id}`.
    pub requests: Arc<crate::requests::Requests>,
    pub proxies: Arc<Proxies>,
    pub profiler: Arc<Mutex<Profiler>>,
    pub ejections: Arc<Ejections>,
    pub deps: Arc<crate::deps::Dependencies>,
    /// Users active at each proxy, whose prediction vectors its stream carries.
    pub vectors: Arc<crate::predictions::UserVectors>,
}

impl TelemetryService {
    /// Takes in one report of proxy `node`, a sidecar of `service` (empty: standalone).
    pub fn ingest(&self, node: &str, service: &str, report: &LoadReport) {
        self.deps.observe(service, report);
        for e in self.load.ingest(report) {
            tracing::warn!(node, error = %e, "telemetry report partly unreadable");
        }
        self.sla.ingest(report);
        if !report.requests.is_empty() {
            self.requests.add(&report.requests, crate::time::unix_ms());
        }
        if !report.transitions.is_empty() {
            let mut p = self.profiler.lock().expect("profiler lock poisoned");
            for t in &report.transitions {
                p.observe(&t.user, &t.next_service, t.unix_ms as f64 / 1000.0);
            }
            drop(p);
            if !node.is_empty() {
                for t in &report.transitions {
                    self.vectors.saw(node, &t.user, t.unix_ms);
                }
            }
        }
        if !node.is_empty() {
            self.proxies.reported(node, report.dropped_reports);
            self.ejections
                .record(node, crate::time::unix_ms(), &report.ejected);
        }
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn report(
        &self,
        request: Request<Streaming<LoadReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let mut inbound = request.into_inner();
        let (mut node, mut service) = (String::new(), String::new());
        let mut reports = 0;
        while let Some(report) = inbound.message().await? {
            if let Some(n) = &report.node {
                node.clone_from(&n.id);
                service.clone_from(&n.service);
            }
            self.ingest(&node, &service, &report);
            reports += 1;
        }
        Ok(Response::new(ReportSummary { reports }))
    }
}
