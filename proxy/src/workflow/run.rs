//! One workflow run: its steps in order, each with its condition, retries, timeout and
//! fallback, under the whole run's deadline; what each step answered is kept under its
//! name (`steps.<name>.status`, `.body`, `.headers`) for the expressions of later steps.
//!
//! ```text
//! step ─▶ if? ─▶ [ kind (call | switch | for_each | while | parallel | workflow) ]
//!                  ▲ failed or timed out: again after a doubling, jittered backoff
//!                  └─ while attempts and the deadline allow
//!        failed ─▶ fallback step (its answer stands for the step) ─▶ or the run fails
//!        done   ─▶ its `compensate` step is stacked; if a later step fails the run,
//!                  the stack runs newest first
//! ```
//! A call's 5xx, transport error or timeout fails the step; a 4xx is an answer to branch
//! on. The deadline is never retried past and skips fallbacks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::runs::{now_ms, Live, StepProgress};
use crate::config::{Step, StepKind, WorkflowSpec};
use crate::qos::Profile;
use crate::runtime::Runtime;
use crate::state::Shared;
use presage_workflow::expr;

/// Loop variables in scope (`item`, `loop_index`, `iteration`).
pub type Vars = Map<String, Value>;

/// Why a run failed, and where.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: String,
    pub message: String,
    /// The run's deadline passed: nothing more is tried.
    pub deadline: bool,
}

impl Failure {
    pub(super) fn at(step: &str, message: impl Into<String>) -> Failure {
        Failure {
            step: step.to_string(),
            message: message.into(),
            deadline: false,
        }
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub struct Run {
    pub shared: Arc<Shared>,
    pub rt: Arc<Runtime>,
    pub deadline: Instant,
    /// The deadline as configured or budgeted (for messages).
    pub budget: Duration,
    pub request_id: http::HeaderValue,
    pub user: Option<String>,
    /// The caller's profile (or the workflow's), which steps inherit.
    pub profile: Option<Arc<Profile>>,
    /// `input` and `headers` as expressions see them (converted once).
    input: expr::Value,
    headers: expr::Value,
    /// Each step's answer, converted once when it is kept: building a context then only
    /// clones reference-counted values.
    steps: Mutex<BTreeMap<String, expr::Value>>,
    pub progress: Live,
    /// Compensation steps of completed steps, oldest first, with their scope.
    compensations: Mutex<Vec<(Step, Vars)>>,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        rt: Arc<Runtime>,
        budget: Duration,
        request_id: http::HeaderValue,
        user: Option<String>,
        profile: Option<Arc<Profile>>,
        input: Value,
        headers: Value,
        progress: Live,
    ) -> Run {
        Run {
            shared,
            rt,
            deadline: Instant::now() + budget,
            budget,
            request_id,
            user,
            profile,
            input: expr::context(&input),
            headers: expr::context(&headers),
            steps: Mutex::new(BTreeMap::new()),
            progress,
            compensations: Mutex::new(Vec::new()),
        }
    }

    /// The workflow's steps, then its output; on failure, the compensations.
    pub async fn workflow(&self, spec: &WorkflowSpec) -> Result<Value, Failure> {
        let out = self.sequence(&spec.steps, &Vars::new()).await;
        let out = out.and_then(|last| self.output(spec, last));
        if out.is_err() {
            self.compensate().await;
        }
        out
    }

    fn output(&self, spec: &WorkflowSpec, last: Value) -> Result<Value, Failure> {
        match &spec.output {
            Some(e) => expr::eval(e, &self.context(&Vars::new()))
                .map_err(|m| Failure::at("(output)", format!("output: {m}"))),
            None => Ok(last),
        }
    }

    /// What expressions see.
    pub(super) fn context(&self, vars: &Vars) -> expr::Value {
        let mut m: BTreeMap<String, expr::Value> = vars
            .iter()
            .map(|(k, v)| (k.clone(), expr::context(v)))
            .collect();
        m.insert("input".into(), self.input.clone());
        m.insert("headers".into(), self.headers.clone());
        let steps = self.steps.lock().expect("steps lock poisoned").clone();
        m.insert("steps".into(), expr::Value::from(steps));
        expr::Value::from(m)
    }

    pub(super) fn set(&self, step: &str, v: Value) {
        let v = expr::context(&v);
        self.steps
            .lock()
            .expect("steps lock poisoned")
            .insert(step.to_string(), v);
    }

    /// Steps in order; the last one's body.
    pub(super) fn sequence<'a>(
        &'a self,
        steps: &'a [Step],
        vars: &'a Vars,
    ) -> Boxed<'a, Result<Value, Failure>> {
        Box::pin(async move {
            let mut last = Value::Null;
            for s in steps {
                last = self.step(s, vars).await?;
            }
            Ok(last)
        })
    }

    async fn step(&self, s: &Step, vars: &Vars) -> Result<Value, Failure> {
        if let Some(cond) = &s.when {
            let holds = expr::holds(cond, &self.context(vars))
                .map_err(|m| Failure::at(&s.name, format!("if: {m}")))?;
            if !holds {
                self.set(&s.name, json!({ "skipped": true }));
                let i = self.begin(&s.name);
                self.end(i, "skipped", 0, None);
                return Ok(Value::Null);
            }
        }
        let i = self.begin(&s.name);
        let mut backoff = s.backoff;
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let left = self.deadline.saturating_duration_since(Instant::now());
            let limit = s.timeout.map_or(left, |t| t.min(left));
            let r = match tokio::time::timeout(limit, self.kind(s, vars)).await {
                Ok(r) => r,
                Err(_) if limit == left => Err(self.past_deadline(&s.name)),
                Err(_) => Err(Failure::at(
                    &s.name,
                    format!("no answer within its timeout of {limit:?}"),
                )),
            };
            match r {
                Err(f) if !f.deadline && attempts < s.attempts => {
                    let pause = backoff + backoff.mul_f64(fastrand::f64() * 0.5);
                    if Instant::now() + pause >= self.deadline {
                        break Err(f);
                    }
                    tracing::debug!(step = %s.name, error = %f.message, attempts, "workflow step retried");
                    tokio::time::sleep(pause).await;
                    backoff *= 2;
                }
                r => break r,
            }
        };
        let status = self.status_of(&s.name);
        match result {
            Ok(v) => {
                self.end(i, "succeeded", attempts, status.map(|s| (s, None)));
                if let Some(c) = &s.compensate {
                    let mut stack = self.compensations.lock().expect("lock poisoned");
                    stack.push(((**c).clone(), vars.clone()));
                }
                Ok(v)
            }
            Err(f) => {
                let fallback = s.fallback.as_deref().filter(|_| !f.deadline);
                let state = if fallback.is_some() {
                    "fallback"
                } else {
                    "failed"
                };
                self.end(
                    i,
                    state,
                    attempts,
                    Some((status.unwrap_or(0), Some(f.message.clone()))),
                );
                let Some(fb) = fallback else {
                    return Err(f);
                };
                let v = Box::pin(self.step(fb, vars)).await?;
                // The fallback's answer stands for the step.
                let mut steps = self.steps.lock().expect("steps lock poisoned");
                if let Some(a) = steps.get(&fb.name).cloned() {
                    steps.insert(s.name.clone(), a);
                }
                Ok(v)
            }
        }
    }

    fn past_deadline(&self, step: &str) -> Failure {
        Failure {
            step: step.to_string(),
            message: format!("the workflow's deadline of {:?} passed", self.budget),
            deadline: true,
        }
    }

    fn status_of(&self, step: &str) -> Option<u16> {
        let steps = self.steps.lock().expect("steps lock poisoned");
        let status = steps.get(step)?.get_attr("status").ok()?;
        u16::try_from(status.as_i64()?).ok()
    }

    async fn kind(&self, s: &Step, vars: &Vars) -> Result<Value, Failure> {
        match &s.kind {
            StepKind::Call(c) => self.call(s, c, vars).await,
            StepKind::Switch(cases) => {
                for (n, (cond, steps)) in cases.iter().enumerate() {
                    let take = match cond {
                        None => true,
                        Some(c) => expr::holds(c, &self.context(vars))
                            .map_err(|m| Failure::at(&s.name, format!("switch[{n}].if: {m}")))?,
                    };
                    if take {
                        let out = self.sequence(steps, vars).await?;
                        self.set(&s.name, json!({ "body": out, "case": n }));
                        return Ok(out);
                    }
                }
                self.set(&s.name, json!({ "body": null, "case": null }));
                Ok(Value::Null)
            }
            StepKind::ForEach {
                items,
                var,
                max,
                steps,
            } => {
                let list = expr::eval(items, &self.context(vars))
                    .map_err(|m| Failure::at(&s.name, format!("for_each.items: {m}")))?;
                let Value::Array(list) = list else {
                    return Err(Failure::at(
                        &s.name,
                        format!("for_each.items is not a list: {list}"),
                    ));
                };
                if list.len() > *max {
                    return Err(Failure::at(
                        &s.name,
                        format!("{} items, more than its max of {max}", list.len()),
                    ));
                }
                let mut out = Vec::with_capacity(list.len());
                for (n, item) in list.into_iter().enumerate() {
                    let mut scope = vars.clone();
                    scope.insert(var.clone(), item);
                    scope.insert("loop_index".into(), json!(n));
                    out.push(self.sequence(steps, &scope).await?);
                }
                self.set(&s.name, json!({ "body": out }));
                Ok(Value::Array(out))
            }
            StepKind::While {
                condition,
                max,
                steps,
            } => {
                let mut last = Value::Null;
                let mut n = 0;
                let mut scope = vars.clone();
                loop {
                    scope.insert("iteration".into(), json!(n));
                    let go = expr::holds(condition, &self.context(&scope))
                        .map_err(|m| Failure::at(&s.name, format!("while.condition: {m}")))?;
                    if !go || n >= *max {
                        break;
                    }
                    last = self.sequence(steps, &scope).await?;
                    n += 1;
                }
                self.set(&s.name, json!({ "body": last, "iterations": n }));
                Ok(last)
            }
            StepKind::Parallel(branches) => {
                let runs = branches.iter().map(|b| self.sequence(b, vars));
                let out = futures_util::future::try_join_all(runs).await?;
                self.set(&s.name, json!({ "body": out }));
                Ok(Value::Array(out))
            }
            StepKind::Workflow(name) => {
                let spec = self
                    .rt
                    .config
                    .workflows
                    .iter()
                    .find(|w| w.name == *name)
                    .cloned()
                    .ok_or_else(|| Failure::at(&s.name, format!("unknown workflow {name:?}")))?;
                let last = self.sequence(&spec.steps, &Vars::new()).await?;
                let out = self.output(&spec, last)?;
                self.set(&s.name, json!({ "body": out }));
                Ok(out)
            }
        }
    }

    /// Runs the stacked compensations, newest first; each is tried, none stops the others.
    async fn compensate(&self) {
        let stack = std::mem::take(&mut *self.compensations.lock().expect("lock poisoned"));
        for (step, vars) in stack.into_iter().rev() {
            // Past the deadline too: undoing is owed whatever the caller's budget.
            let i = self.begin(&step.name);
            let r =
                tokio::time::timeout(step.timeout.unwrap_or(self.budget), self.kind(&step, &vars))
                    .await;
            let error = match r {
                Ok(Ok(_)) => None,
                Ok(Err(f)) => Some(f.message),
                Err(_) => Some("no answer within its timeout".to_string()),
            };
            if let Some(e) = &error {
                tracing::warn!(step = %step.name, error = %e, "compensation failed");
            }
            let status = self.status_of(&step.name).unwrap_or(0);
            let state = if error.is_some() {
                "failed"
            } else {
                "compensated"
            };
            self.end(i, state, 1, Some((status, error)));
        }
    }

    fn begin(&self, name: &str) -> usize {
        let mut p = self.progress.lock().expect("progress lock poisoned");
        p.steps.push(StepProgress {
            name: name.to_string(),
            state: "running",
            attempts: 0,
            status: None,
            error: None,
            started_ms: now_ms(),
            finished_ms: None,
        });
        p.steps.len() - 1
    }

    fn end(
        &self,
        i: usize,
        state: &'static str,
        attempts: u32,
        result: Option<(u16, Option<String>)>,
    ) {
        let mut p = self.progress.lock().expect("progress lock poisoned");
        let s = &mut p.steps[i];
        s.state = state;
        s.attempts = attempts;
        s.finished_ms = Some(now_ms());
        if let Some((status, error)) = result {
            s.status = (status > 0).then_some(status);
            s.error = error;
        }
    }
}
