//! The connection to the control plane that both streams (discovery in `xds`, load
//! reports in `telemetry`) use: the gRPC channel, its errors, and the reconnect backoff.

use std::time::Duration;

use crate::config::ControlPlaneSpec;

/// First reconnect delay; doubles per failed attempt up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Envoy's default maximum for xDS reconnects is 30 s; a mesh that predicts load wants
/// its telemetry back sooner.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A stream that lasted this long was healthy: start backing off from scratch.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control plane {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("control plane stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("control plane stream closed")]
    Closed,
}

/// Jittered exponential backoff ("full jitter": uniform in 0..=cap).
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let cap = BASE_BACKOFF
            .saturating_mul(1 << self.attempt.min(16))
            .min(MAX_BACKOFF);
        self.attempt += 1;
        cap.mul_f64(fastrand::f64())
    }

    /// Resets after a session that stayed up long enough to count as healthy.
    pub fn after_session(&mut self, lasted: Duration) {
        if lasted >= HEALTHY_SESSION {
            self.attempt = 0;
        }
    }
}

/// Opens a channel to the control plane.
pub async fn connect(spec: &ControlPlaneSpec) -> Result<tonic::transport::Channel, ClientError> {
    let url = spec.address.to_string();
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Connect(url.clone(), e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Notice a dead control plane within a minute even when nothing changes.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect(url, e))
}
