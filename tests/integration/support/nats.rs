//! A real NATS server (Debian's `nats-server`) on a free loopback port, for the event
//! bus exporter's tests.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Nats {
    pub child: Child,
    /// `nats://127.0.0.1:port`.
    pub url: String,
}

impl Nats {
    pub async fn start() -> Nats {
        let port = super::unused_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server from Debian's nats-server (scripts/test.sh installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        let ok = super::wait_until(Duration::from_secs(15), || async {
            async_nats::connect(url.as_str()).await.ok().map(|_| ())
        })
        .await;
        assert!(ok.is_some(), "nats-server did not become ready on {url}");
        Nats { child, url }
    }
}
