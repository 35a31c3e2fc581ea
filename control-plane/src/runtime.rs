//! Wires the control plane together and runs it: store, resources, the gRPC server
//! (discovery + telemetry), the REST API, and the periodic save of load histories.
//!
//! ```text
//!   registries ──▶ discovery::Merger ─┐
//!   REST (axum) ──write──▶ Resources ◀┘──commit──▶ Store (redb)
//!                              │ watch
//!                              ▼
//!   proxies ◀──delta── Discovery sessions          Telemetry ──▶ Load ──every 30 s──▶ Store
//!   proxies ──reports──────────────────────────────▶   └──transitions──▶ Profiler
//!   Load + Forecasts ──▶ autoscale (planner) ──▶ actuators ──instances──▶ Merger
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use presage_api::discovery_server::DiscoveryServer;
use presage_api::identity_server::IdentityServer;
use presage_api::resource::Body;
use presage_api::telemetry_server::TelemetryServer;
use presage_api::Resource;
use tokio::net::TcpListener;

use crate::behaviour::{Profiler, ProfilerConfig};
use crate::config::Config;
use crate::discovery::{self, Merger};
use crate::load::Load;
use crate::metrics::Metrics;
use crate::proxies::Proxies;
use crate::resources::{blocking, Resources};
use crate::rest::{self, Api};
use crate::store::{Store, StoreError};
use crate::telemetry::TelemetryService;
use crate::xds::DiscoveryService;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("api server: {0}")]
    Api(std::io::Error),
    #[error(transparent)]
    Ca(#[from] crate::identity::CaError),
}

/// The addresses actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub api: SocketAddr,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Writes the config's seed resources that the store does not have yet.
async fn seed(resources: &Resources, cfg: &Config) -> Result<(), StoreError> {
    let snap = resources.snapshot();
    let seeds = cfg
        .services
        .iter()
        .map(|c| Resource::new(c.name.clone(), Body::Cluster(c.clone())))
        .chain(
            cfg.routes
                .iter()
                .map(|r| Resource::new(r.name.clone(), Body::Route(r.clone()))),
        )
        .chain(
            cfg.qos_profiles
                .iter()
                .map(|q| Resource::new(q.name.clone(), Body::QosProfile(q.clone()))),
        )
        .chain(
            crate::tiers::defaults()
                .into_iter()
                .map(|t| Resource::new(t.name.clone(), Body::QosTier(t))),
        )
        .chain(
            cfg.workflow_seeds
                .iter()
                .map(|w| Resource::new(w.name.clone(), Body::Workflow(w.clone()))),
        );
    for r in seeds {
        let t = r.body.as_ref().map(|b| b.type_url()).unwrap_or_default();
        match snap.get(t).and_then(|s| s.items.get(&r.name)) {
            Some(stored) if stored.version != r.version => {
                tracing::info!(type_url = t, name = %r.name, "keeping the stored resource; it differs from the config's seed");
            }
            Some(_) => {}
            None => {
                resources.put(r).await?;
            }
        }
    }
    Ok(())
}

/// The behaviour profiler's key in the store's `models` table.
const PROFILER_KEY: &str = "behaviour";
/// The profiler is saved every this many load snapshots (and at shutdown).
const PROFILER_EVERY_SNAPSHOTS: u64 = 10;

/// Runs until `shutdown` completes; `on_bound` is told the addresses once listening.
pub async fn run(
    cfg: Config,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // The registry clients (rs-consul, kube) pull in rustls with both ring and
    // aws-lc-rs; without a process default, building a TLS config would panic. Ours is
    // aws-lc-rs, as in the proxy. An `Err` means one is installed already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let path = cfg.store.clone();
    let store = blocking(move || Store::open(&path)).await?;
    let s = store.clone();
    let resources = Arc::new(blocking(move || Resources::load(s)).await?);
    seed(&resources, &cfg).await?;
    let load = Arc::new(Load::default());
    let s = store.clone();
    let bad = load.restore(blocking(move || s.series()).await?);
    if !bad.is_empty() {
        tracing::warn!(services = ?bad, "load histories in the store could not be read; starting them afresh");
    }
    let s = store.clone();
    let deps = Arc::new(blocking(move || crate::deps::Dependencies::load(s)).await?);
    for e in &cfg.dependencies {
        let spec = crate::deps::EdgeSpec {
            kind: e.kind,
            ratio: e.ratio,
        };
        let (d, from, to) = (deps.clone(), e.from.clone(), e.to.clone());
        // Validated with the config: only the store can fail here.
        let _ = blocking(move || d.put(&from, &to, spec)).await?;
    }
    let bus = crate::bus::Bus::default();
    let proxies = Arc::new(Proxies::default());
    let metrics = Arc::new(Metrics::default());
    let registry = metrics.registry(proxies.clone());
    let s = store.clone();
    let profiler = match blocking(move || s.model(PROFILER_KEY)).await? {
        None => Profiler::new(ProfilerConfig::default()),
        Some(bytes) => Profiler::decode(ProfilerConfig::default(), &bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the behaviour profiler in the store could not be read; starting it afresh");
            Profiler::new(ProfilerConfig::default())
        }),
    };
    let profiler = Arc::new(Mutex::new(profiler));

    let (c, s) = (cfg.identity.clone(), store.clone());
    let ca = Arc::new(
        tokio::task::spawn_blocking(move || crate::identity::Ca::load(&c, &s))
            .await
            .expect("loading the CA panicked")?,
    );

    let grpc = bind(cfg.grpc).await?;
    let api_listener = bind(cfg.api).await?;
    let bound = Bound {
        grpc: grpc.local_addr().map_err(|source| RunError::Bind {
            addr: cfg.grpc,
            source,
        })?,
        api: api_listener.local_addr().map_err(|source| RunError::Bind {
            addr: cfg.api,
            source,
        })?,
    };

    let vectors = Arc::new(crate::predictions::UserVectors::new(profiler.clone()));
    let discovery = DiscoveryService {
        resources: resources.clone(),
        proxies: proxies.clone(),
        vectors: Some(vectors.clone()),
    };
    let ejections = Arc::new(crate::health::Ejections::default());
    let sla = Arc::new(crate::sla::Sla::default());
    let alerts = Arc::new(crate::sla::alerts::Alerts::default());
    tokio::spawn(crate::sla::alerts::run(
        cfg.alerting.clone(),
        sla.clone(),
        alerts.clone(),
        resources.clone(),
        metrics.clone(),
        format!("http://{}/v1/alerts", bound.api),
    ));
    let requests = Arc::new(crate::requests::Requests::durable(store.clone()));
    let telemetry = TelemetryService {
        requests: requests.clone(),
        sla: sla.clone(),
        load: load.clone(),
        proxies: proxies.clone(),
        profiler: profiler.clone(),
        ejections: ejections.clone(),
        deps: deps.clone(),
        vectors,
    };
    // Discovery: every backend feeds one merger, which owns writes of discovered clusters.
    let (updates, updates_rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(
        Merger {
            resources: resources.clone(),
            metrics: metrics.clone(),
        }
        .run(updates_rx),
    );
    if let Some(etcd) = cfg.discovery.etcd.clone() {
        tokio::spawn(discovery::etcd::watch(etcd, updates.clone()));
    }
    if let Some(consul) = cfg.discovery.consul.clone() {
        tokio::spawn(discovery::consul::watch(consul, updates.clone()));
    }
    if let Some(k8s) = cfg.discovery.kubernetes.clone() {
        tokio::spawn(discovery::kubernetes::watch(k8s, updates.clone()));
    }
    if !cfg.discovery.fixed.is_empty() {
        tokio::spawn(discovery::fixed::watch(
            cfg.discovery.fixed.clone(),
            updates.clone(),
        ));
    }
    // Instances the actuators start are registered through the same merger.
    let actuated = updates.clone();
    drop(updates);
    tokio::spawn(crate::predict::run(
        load.clone(),
        resources.clone(),
        metrics.clone(),
        cfg.forecast_interval,
    ));
    let autoscaling = Arc::new(
        blocking({
            let s = store.clone();
            let c = cfg.autoscaling.clone();
            move || crate::autoscale::Autoscaling::new(s, &c)
        })
        .await?,
    );
    let scaler_inputs = crate::autoscale::Inputs {
        load: load.clone(),
        sla: sla.clone(),
        resources: resources.clone(),
        metrics: metrics.clone(),
        profiler: profiler.clone(),
        registry: actuated,
        deps: deps.clone(),
        alerts: alerts.clone(),
        bus: bus.clone(),
    };
    let api = Api {
        requests,
        autoscaling: autoscaling.clone(),
        sla,
        alerts,
        resources,
        proxies,
        load: load.clone(),
        profiler: profiler.clone(),
        metrics: Arc::new(registry),
        ejections,
        deps,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    if let Some(nats) = cfg.events.nats.clone() {
        tokio::spawn(crate::bus::export_nats(nats, bus, stop_rx.clone()));
    }
    let scaler = tokio::spawn(crate::autoscale::run(
        cfg.autoscaling.clone(),
        autoscaling,
        scaler_inputs,
        stop_rx.clone(),
    ));

    let grpc_server = tonic::transport::Server::builder()
        // Proxies hold their streams for hours; keep NATs and load balancers from
        // dropping them silently, and notice dead peers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(DiscoveryServer::new(discovery))
        .add_service(TelemetryServer::new(telemetry))
        .add_service(IdentityServer::new(crate::identity::IdentityService {
            ca,
            attest: Arc::new(crate::attest::Attestor::new(cfg.identity.attest.clone())),
            metrics: metrics.clone(),
        }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            stopped(stop_rx.clone()),
        );
    let tokens = Arc::new(crate::auth::Tokens::new(&cfg.auth, cfg.admin_token.clone()));
    if !tokens.enabled() {
        tracing::warn!("no API tokens configured (auth.tokens, PRESAGE_API_TOKEN): the REST API is open to anyone who can reach it");
    }
    let router = rest::router(api).layer(axum::middleware::from_fn_with_state(
        tokens,
        crate::auth::require,
    ));
    let api_server =
        axum::serve(api_listener, router).with_graceful_shutdown(stopped(stop_rx.clone()));

    let saver = {
        let (load, store, mut rx) = (load.clone(), store.clone(), stop_rx.clone());
        let profiler = profiler.clone();
        let every = cfg.snapshot_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            for n in 1u64.. {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = rx.wait_for(|s| *s) => true,
                };
                let items = load.encode_all();
                let s = store.clone();
                if let Err(e) = blocking(move || s.put_series(&items)).await {
                    tracing::error!(error = %e, "saving load histories failed");
                }
                // The profiler can hold a million users: saved less often, and always last.
                if last || n % PROFILER_EVERY_SNAPSHOTS == 0 {
                    let p = profiler.clone();
                    let s = store.clone();
                    let saved = blocking(move || {
                        let bytes = p.lock().expect("profiler lock poisoned").encode();
                        s.put_model(PROFILER_KEY, &bytes)
                    })
                    .await;
                    if let Err(e) = saved {
                        tracing::error!(error = %e, "saving the behaviour profiler failed");
                    }
                }
                if last {
                    return;
                }
            }
        })
    };

    on_bound(bound);
    let (g, a) = tokio::join!(grpc_server, api_server);
    g?;
    a.map_err(RunError::Api)?;
    // The final save of the load histories; the instances the actuators started stopped.
    let _ = tokio::join!(saver, scaler);
    Ok(())
}
