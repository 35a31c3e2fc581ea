//! Composite services: the workflow schema (`spec`: what users write, in YAML or JSON,
//! and its validation into runnable `WorkflowSpec`s) and the expressions and templates
//! its steps use (`expr`).
//!
//! Shared by the proxy, which runs workflows (`presage_proxy::workflow`), and the
//! control plane, which stores them, validates them at its API, pushes them to the
//! proxies and learns their constituent services. Its own crate because both use it and
//! neither may depend on the other; no I/O.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod expr;
pub mod spec;

pub use spec::{
    build, is_workflow, parse, Call, Known, Problem, RawWorkflow, Step, StepKind, WorkflowSpec,
    DEFAULT_DEADLINE, DEFAULT_RETENTION,
};
