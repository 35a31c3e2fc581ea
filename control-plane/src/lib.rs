//! Presage control plane: learns from the proxies' telemetry and decides capacity before
//! load arrives.
//!
//! Today it holds the behaviour profiler (`behaviour`: per-user next-service prediction)
//! and the forecasting engine (`forecast`: request rates with calibrated intervals).
//! Pure logic only: it takes events in and returns predictions, with no I/O, so the
//! runtime (issue 3) and the planner (issue 7) can drive it. It never depends on the proxy.
//! No feature flags.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod behaviour;
pub mod forecast;
pub mod time;
