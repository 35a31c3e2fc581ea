//! Every integration test, in one test binary: one crate to compile and link instead of
//! one per file (each linked the whole dependency graph and compiled its own copy of
//! `support`). nextest still runs each test in a process of its own.

mod support;

mod autoscale;
mod cli;
mod dependencies;
mod deploy;
mod discovery;
mod forecast;
mod kubernetes_actuator;
mod link;
mod mesh;
mod negotiation;
mod protocols;
mod qos;
mod registries;
mod reload;
mod replay;
mod resilience;
mod routing;
mod transparent;
mod workflows;
