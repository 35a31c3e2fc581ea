//! Presage control plane: learns from the proxies' telemetry and decides capacity before
//! load arrives.
//!
//! ```text
//!  pure logic (no I/O)           adapters (I/O)                     wiring
//!  behaviour  forecast  load     store (redb)  xds  telemetry  rest   runtime
//!  validate   config                            (tonic)        (axum)
//! ```
//! - `behaviour`: per-user next-service prediction; `forecast`: request rates with
//!   calibrated intervals; `load`: per-service load history from telemetry.
//! - `resources`: what is served to proxies (store-backed snapshot + watch); `proxies`:
//!   who is connected and what they ACKed; `validate`: field-level checks of resources.
//! - `predict`: forecasts each service's request rate from its load history and
//!   publishes them as `Forecast` resources.
//! - `discovery`: instances from registries (etcd, static), merged into clusters.
//! - `planner`: instance counts from forecasts; `autoscale`: the live loop that applies
//!   them through `actuate` (local processes, dry run) and records every decision.
//! - `identity`: the mesh CA that signs workload certificates; `attest`: whether the
//!   proxy asking may have the identity it names (Kubernetes TokenReview).
//! - `runtime::run` starts the gRPC server (discovery and telemetry streams, see
//!   `api/README.md`), the REST API with `/openapi.json`, and the periodic store save.
//!
//! It never depends on the proxy: the two meet only in `presage-api`. No feature flags.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod actuate;
pub mod attest;
pub mod auth;
pub mod autoscale;
pub mod behaviour;
pub mod bus;
pub mod config;
pub mod deps;
pub mod discovery;
pub mod events;
pub mod forecast;
pub mod health;
pub mod identity;
pub mod inject;
pub mod load;
pub mod metrics;
pub mod negotiate;
pub mod planner;
pub mod predict;
pub mod predictions;
pub mod proxies;
pub mod requests;
pub mod resources;
pub mod rest;
pub mod runtime;
pub mod sla;
pub mod store;
pub mod telemetry;
pub mod tiers;
pub mod time;
pub mod validate;
pub mod webhook;
pub mod workflows;
pub mod xds;
