//! A real etcd (Debian's `etcd-server`) on free loopback ports with a temporary data
//! directory, for the discovery tests.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::TempDir;

pub struct Etcd {
    pub child: Child,
    /// `127.0.0.1:port` of the client URL.
    pub endpoint: String,
    ports: (u16, u16),
    _dir: TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let client = super::unused_port();
        let peer = std::iter::repeat_with(super::unused_port)
            .find(|p| *p != client)
            .unwrap();
        Self::spawn(client, peer).await
    }

    /// Kills this etcd and starts an empty one on the same ports: an etcd that lost its
    /// data (and every lease).
    pub async fn restart_empty(&mut self) {
        self.child.kill().await.unwrap();
        let (client, peer) = self.ports;
        *self = Self::spawn(client, peer).await;
    }

    async fn spawn(client: u16, peer: u16) -> Etcd {
        let dir = TempDir::new();
        let curl = format!("http://127.0.0.1:{client}");
        let purl = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.0.join("etcd"))
            .args([
                "--listen-client-urls",
                &curl,
                "--advertise-client-urls",
                &curl,
            ])
            .args([
                "--listen-peer-urls",
                &purl,
                "--initial-advertise-peer-urls",
                &purl,
            ])
            .args(["--initial-cluster", &format!("test={purl}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd from Debian's etcd-server (scripts/test.sh installs it)");
        let endpoint = format!("127.0.0.1:{client}");
        // Ready when a read succeeds (etcd accepts connections before it has a leader).
        let ok = super::wait_until(Duration::from_secs(30), || async {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .ok()?;
            c.get("ready", None).await.ok().map(|_| ())
        })
        .await;
        assert!(ok.is_some(), "etcd did not become ready on {endpoint}");
        Etcd {
            child,
            endpoint,
            ports: (client, peer),
            _dir: dir,
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .unwrap()
    }
}
