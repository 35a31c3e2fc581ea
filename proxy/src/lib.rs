//! Presage data plane: the per-pod L7 sidecar that is also a standalone reverse proxy.
//!
//! ```text
//!            ┌────────────── Shared (state.rs) ───────────────┐
//!  reload ──▶│ live: ArcSwap<Runtime> ── routes ──▶ clusters  │◀── admin (/metrics, /config)
//!  xds ──────▶│ dynamic (control plane's clusters, routes, ...) │
//!            └──────────────────▲─────────────────────────────┘
//!  telemetry ◀── load (per-service counters) ◀── forward
//!  listen (TCP/TLS, h1+h2) ──▶ forward::handle ──▶ balance ──▶ upstream client ──▶ endpoints
//!                                     │            outlier ◀── outcomes
//! ```
//! Layering, lowest first: `config` (and `routing`, `tls`), `load`, `metrics`,
//! `outlier`/`balance`, `qos`, `upstream`, `runtime`, `control_plane`, `telemetry`, `state`,
//! `downstream`, `rewrite`, `splice`, `upgrade`, `forward`, `coalesce`, `listen`/`admin`/`reload`/`xds`, then `server`.
//! No feature flags.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access_log;
pub mod admin;
pub mod attempt;
pub mod authz;
pub mod balance;
pub mod body;
pub mod coalesce;
pub mod config;
pub mod control_plane;
pub mod downstream;
pub mod errors;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod identity;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod outlier;
pub mod qos;
pub mod reload;
pub mod rewrite;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod splice;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod transparent;
pub mod upgrade;
pub mod upstream;
pub mod warm;
pub mod workflow;
pub mod xds;

pub use config::{Config, ConfigErrors};
