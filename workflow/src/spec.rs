//! The workflow schema exactly as users write it (`Raw*`, YAML or JSON; unknown fields
//! rejected) and its validation into `WorkflowSpec`s the proxy runs.
//!
//! ```yaml
//! name: checkout
//! deadline: 2s                 # else the caller's QoS budget, else 30 s
//! steps:
//!   - name: user
//!     call: { service: users, path: "/users/{{ input.user | urlencode }}" }
//!     retry: { attempts: 2, backoff: 50ms }
//!     timeout: 500ms
//!     fallback: { name: guest, call: { service: users, path: /guest } }
//!   - name: items
//!     for_each: { items: steps.user.body.cart, as: item, max: 50 }
//!     steps: [ { name: price, call: { service: prices, path: "/p/{{ item }}" } } ]
//! ```
//! A step is exactly one of `call`, `switch`, `for_each`, `while`, `parallel` or
//! `workflow`. `build` reports every problem with its location, its field path and the
//! step: an unknown service or QoS profile (when the caller knows them), a `while`
//! without `max`, a cycle of workflows calling each other, a duplicate step name, a bad
//! duration, method, header name, expression or template.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::expr;

/// Default deadline of a workflow whose caller has no latency budget.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Default time an asynchronous run's status is kept after it ends.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);
/// Backoff before a step's second try, when `retry` names none.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
/// Items a `for_each` without `max` may iterate over.
const DEFAULT_FOR_EACH_MAX: usize = 1000;

/// One problem in a definition: where, which field, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Location,
    /// e.g. `workflows[0].steps[1] (step "pay").retry.attempts`.
    pub field: String,
    pub message: String,
}

/// What the definitions may refer to; `None`: not known here, not checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Known<'a> {
    pub clusters: Option<&'a HashSet<&'a str>>,
    pub profiles: Option<&'a HashSet<&'a str>>,
}

#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn err(&mut self, at: Location, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn duration(b: &mut Problems, d: &Option<Spanned<String>>, field: &str) -> Option<Duration> {
    let d = d.as_ref()?;
    match humantime::parse_duration(&d.value) {
        Ok(v) => Some(v),
        Err(e) => {
            b.err(
                d.referenced,
                field,
                format!(
                    "expected a duration like 250ms or 5s, found {:?}: {e}",
                    d.value
                ),
            );
            None
        }
    }
}

/// Whether `text` is one workflow (a mapping with `steps`, as `/v1/workflows` takes it)
/// rather than a proxy config (whose workflows are under `workflows:`).
pub fn is_workflow(text: &str) -> bool {
    serde_saphyr::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(text)
        .is_ok_and(|m| m.contains_key("steps"))
}

/// One workflow from YAML or JSON text; the error is located in `text`.
pub fn parse(text: &str) -> Result<RawWorkflow, Problem> {
    let mut path = None;
    let res = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, RawWorkflow>(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    res.map_err(|e| {
        let at = e.location().unwrap_or(Location::UNKNOWN);
        let mut message = e.to_string();
        // The location is the Problem's; drop saphyr's own copy of it.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        Problem {
            at,
            field: match path.as_deref() {
                None | Some(".") | Some("") => "(document)".into(),
                Some(p) => p.to_string(),
            },
            message,
        }
    })
}

/// Validates `raw` (fields named `{prefix}[i]`, or from the root without a prefix: one
/// workflow) into runnable specs, or every problem found.
pub fn build(
    raw: &[RawWorkflow],
    prefix: Option<&str>,
    known: &Known<'_>,
) -> Result<Vec<Arc<WorkflowSpec>>, Vec<Problem>> {
    let mut problems = Problems::default();
    let names: HashSet<&str> = raw.iter().map(|w| w.name.value.as_str()).collect();
    let mut check = Check {
        known,
        workflows: &names,
        calls: BTreeMap::new(),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let field = match prefix {
            Some(p) => format!("{p}[{i}]"),
            None => String::new(),
        };
        let f = |x: &str| {
            if field.is_empty() {
                x.to_string()
            } else {
                format!("{field}.{x}")
            }
        };
        if !seen.insert(w.name.value.as_str()) {
            problems.err(
                w.name.referenced,
                f("name"),
                format!("duplicate workflow name {:?}", w.name.value),
            );
        }
        if w.steps.is_empty() {
            problems.err(
                w.name.referenced,
                f("steps"),
                "expected at least one step, found none",
            );
        }
        if let Some(p) = &w.qos_profile {
            check.profile(&mut problems, p, &f("qos_profile"));
        }
        if let Some(o) = &w.output {
            check.expression(&mut problems, o, &f("output"));
        }
        let mut step_names = HashSet::new();
        let steps = check.steps(&mut problems, &w.steps, &f("steps"), &mut step_names);
        check.calls.insert(
            w.name.value.clone(),
            (
                w.name.referenced,
                f("steps"),
                runs(&steps).into_iter().map(str::to_string).collect(),
            ),
        );
        out.push(Arc::new(WorkflowSpec {
            name: w.name.value.clone(),
            deadline: duration(&mut problems, &w.deadline, &f("deadline")),
            qos_profile: w.qos_profile.as_ref().map(|p| p.value.clone()),
            steps,
            output: w.output.as_ref().map(|o| o.value.clone()),
            retention: duration(&mut problems, &w.retention, &f("retention"))
                .unwrap_or(DEFAULT_RETENTION),
        }));
    }
    check.cycles(&mut problems);
    if problems.0.is_empty() {
        Ok(out)
    } else {
        Err(problems.0)
    }
}

impl WorkflowSpec {
    /// The services its steps call (fallbacks and compensations too), not those of the
    /// workflows it runs as steps.
    pub fn services(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        visit(&self.steps, &mut |s| {
            if let StepKind::Call(c) = &s.kind {
                out.insert(c.service.clone());
            }
        });
        out
    }

    /// The QoS profiles it names, for itself and its steps.
    pub fn profiles(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self.qos_profile.as_deref().into_iter().collect();
        visit(&self.steps, &mut |s| out.extend(s.qos_profile.as_deref()));
        out
    }

    /// The workflows its steps run as steps.
    pub fn runs(&self) -> Vec<&str> {
        runs(&self.steps)
    }
}

/// Calls `f` on every step of `steps` and on those nested in them: cases, loop bodies,
/// branches, fallbacks and compensations.
pub fn visit<'a, F: FnMut(&'a Step)>(steps: &'a [Step], f: &mut F) {
    for s in steps {
        f(s);
        match &s.kind {
            StepKind::Switch(cases) => cases.iter().for_each(|(_, s)| visit(s, f)),
            StepKind::ForEach { steps, .. } | StepKind::While { steps, .. } => visit(steps, f),
            StepKind::Parallel(branches) => branches.iter().for_each(|b| visit(b, f)),
            StepKind::Call(_) | StepKind::Workflow(_) => {}
        }
        for extra in [&s.fallback, &s.compensate].into_iter().flatten() {
            visit(std::slice::from_ref(&**extra), f);
        }
    }
}

/// The workflows `steps` run as steps.
fn runs(steps: &[Step]) -> Vec<&str> {
    let mut out = Vec::new();
    visit(steps, &mut |s| {
        if let StepKind::Workflow(w) = &s.kind {
            out.push(w.as_str());
        }
    });
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub name: Spanned<String>,
    pub deadline: Option<Spanned<String>>,
    /// QoS profile of its steps when the caller has none.
    pub qos_profile: Option<Spanned<String>>,
    pub steps: Vec<RawStep>,
    /// Expression whose value is the answer's body; default the last step's body.
    pub output: Option<Spanned<String>>,
    /// How long an asynchronous run's status is kept after it ends.
    pub retention: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Spanned<String>,
    /// Run only when this holds (skipped otherwise).
    #[serde(rename = "if")]
    pub when: Option<Spanned<String>>,
    pub call: Option<RawCall>,
    pub switch: Option<Vec<RawCase>>,
    pub for_each: Option<RawForEach>,
    #[serde(rename = "while")]
    pub repeat: Option<RawWhile>,
    pub parallel: Option<Vec<RawBranch>>,
    pub workflow: Option<Spanned<String>>,
    /// The steps of `for_each` and `while`.
    #[serde(default)]
    pub steps: Vec<RawStep>,
    pub retry: Option<RawStepRetry>,
    pub timeout: Option<Spanned<String>>,
    pub fallback: Option<Box<RawStep>>,
    pub compensate: Option<Box<RawStep>>,
    pub qos_profile: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    pub service: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    /// Absent: the default case (last).
    #[serde(rename = "if")]
    pub when: Option<Spanned<String>>,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForEach {
    pub items: Spanned<String>,
    #[serde(rename = "as")]
    pub var: Option<Spanned<String>>,
    pub max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhile {
    pub condition: Spanned<String>,
    pub max: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBranch {
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStepRetry {
    pub attempts: u32,
    pub backoff: Option<Spanned<String>>,
}

/// A validated workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    pub name: String,
    pub deadline: Option<Duration>,
    pub qos_profile: Option<String>,
    pub steps: Vec<Step>,
    pub output: Option<String>,
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub when: Option<String>,
    pub kind: StepKind,
    /// Tries in all (1: no retry), and the backoff before the second (doubled after).
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Option<Duration>,
    pub fallback: Option<Box<Step>>,
    pub compensate: Option<Box<Step>>,
    pub qos_profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Call(Call),
    /// Cases in order; the first whose condition holds (or the default) runs.
    Switch(Vec<(Option<String>, Vec<Step>)>),
    ForEach {
        items: String,
        var: String,
        max: usize,
        steps: Vec<Step>,
    },
    While {
        condition: String,
        max: usize,
        steps: Vec<Step>,
    },
    Parallel(Vec<Vec<Step>>),
    Workflow(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub service: String,
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(http::HeaderName, String)>,
    pub body: Option<String>,
}

struct Check<'a> {
    known: &'a Known<'a>,
    workflows: &'a HashSet<&'a str>,
    /// Workflow -> (where, field, the workflows it calls).
    calls: BTreeMap<String, (Location, String, Vec<String>)>,
}

impl Check<'_> {
    fn expression(&self, b: &mut Problems, s: &Spanned<String>, field: &str) {
        if let Err(e) = expr::check_expression(&s.value) {
            b.err(
                s.referenced,
                field,
                format!("bad expression {:?}: {e}", s.value),
            );
        }
    }

    fn template(&self, b: &mut Problems, s: &Spanned<String>, field: &str) {
        if let Err(e) = expr::check_template(&s.value) {
            b.err(
                s.referenced,
                field,
                format!("bad template {:?}: {e}", s.value),
            );
        }
    }

    fn profile(&self, b: &mut Problems, p: &Spanned<String>, field: &str) {
        if self
            .known
            .profiles
            .is_some_and(|ps| !ps.contains(p.value.as_str()))
        {
            b.err(
                p.referenced,
                field,
                format!("unknown QoS profile {:?}", p.value),
            );
        }
    }

    fn steps(
        &mut self,
        b: &mut Problems,
        raw: &[RawStep],
        field: &str,
        names: &mut HashSet<String>,
    ) -> Vec<Step> {
        raw.iter()
            .enumerate()
            .map(|(i, s)| self.step(b, s, &format!("{field}[{i}]"), names))
            .collect()
    }

    fn step(
        &mut self,
        b: &mut Problems,
        s: &RawStep,
        field: &str,
        names: &mut HashSet<String>,
    ) -> Step {
        let at = s.name.referenced;
        let field = format!("{field} (step {:?})", s.name.value);
        let f = |x: &str| format!("{field}.{x}");
        if !names.insert(s.name.value.clone()) {
            b.err(
                at,
                f("name"),
                format!("duplicate step name {:?}", s.name.value),
            );
        }
        if let Some(w) = &s.when {
            self.expression(b, w, &f("if"));
        }
        if let Some(p) = &s.qos_profile {
            self.profile(b, p, &f("qos_profile"));
        }
        let kinds = [
            s.call.is_some(),
            s.switch.is_some(),
            s.for_each.is_some(),
            s.repeat.is_some(),
            s.parallel.is_some(),
            s.workflow.is_some(),
        ];
        let count = kinds.iter().filter(|k| **k).count();
        if count != 1 {
            b.err(
                at,
                field.clone(),
                format!("expected exactly one of call, switch, for_each, while, parallel, workflow; found {count}"),
            );
        }
        let loops = s.for_each.is_some() || s.repeat.is_some();
        if !s.steps.is_empty() && !loops {
            b.err(at, f("steps"), "only a for_each or while step has steps");
        }
        if loops && s.steps.is_empty() {
            b.err(
                at,
                f("steps"),
                "expected at least one step in the loop, found none",
            );
        }
        let kind = if let Some(c) = &s.call {
            self.call(b, c, &f("call"))
        } else if let Some(cases) = &s.switch {
            let mut out = Vec::new();
            for (i, c) in cases.iter().enumerate() {
                let cf = f(&format!("switch[{i}]"));
                match &c.when {
                    Some(w) => self.expression(b, w, &format!("{cf}.if")),
                    None if i + 1 != cases.len() => {
                        b.err(at, cf.clone(), "only the last case may have no `if`")
                    }
                    None => {}
                }
                let steps = self.steps(b, &c.steps, &format!("{cf}.steps"), names);
                out.push((c.when.as_ref().map(|w| w.value.clone()), steps));
            }
            StepKind::Switch(out)
        } else if let Some(e) = &s.for_each {
            self.expression(b, &e.items, &f("for_each.items"));
            StepKind::ForEach {
                items: e.items.value.clone(),
                var: e
                    .var
                    .as_ref()
                    .map_or_else(|| "item".to_string(), |v| v.value.clone()),
                max: e.max.unwrap_or(DEFAULT_FOR_EACH_MAX),
                steps: self.steps(b, &s.steps, &f("steps"), names),
            }
        } else if let Some(w) = &s.repeat {
            self.expression(b, &w.condition, &f("while.condition"));
            let max = match &w.max {
                Some(m) if m.value == 0 => {
                    b.err(m.referenced, f("while.max"), "expected at least 1, found 0");
                    1
                }
                Some(m) => m.value,
                None => {
                    b.err(
                        w.condition.referenced,
                        f("while.max"),
                        "an unbounded loop: `while` needs `max` (the most iterations)",
                    );
                    1
                }
            };
            StepKind::While {
                condition: w.condition.value.clone(),
                max,
                steps: self.steps(b, &s.steps, &f("steps"), names),
            }
        } else if let Some(branches) = &s.parallel {
            StepKind::Parallel(
                branches
                    .iter()
                    .enumerate()
                    .map(|(i, br)| {
                        self.steps(b, &br.steps, &f(&format!("parallel[{i}].steps")), names)
                    })
                    .collect(),
            )
        } else if let Some(w) = &s.workflow {
            if !self.workflows.contains(w.value.as_str()) {
                b.err(
                    w.referenced,
                    f("workflow"),
                    format!("unknown workflow {:?}", w.value),
                );
            }
            StepKind::Workflow(w.value.clone())
        } else {
            StepKind::Parallel(Vec::new())
        };
        let (attempts, backoff) = match &s.retry {
            Some(r) if r.attempts == 0 => {
                b.err(at, f("retry.attempts"), "expected at least 1, found 0");
                (1, Duration::ZERO)
            }
            Some(r) => (
                r.attempts,
                duration(b, &r.backoff, &f("retry.backoff")).unwrap_or(DEFAULT_BACKOFF),
            ),
            None => (1, Duration::ZERO),
        };
        let mut extra = |x: &Option<Box<RawStep>>, name: &str| {
            x.as_ref()
                .map(|x| Box::new(self.step(b, x, &f(name), names)))
        };
        let fallback = extra(&s.fallback, "fallback");
        let compensate = extra(&s.compensate, "compensate");
        Step {
            name: s.name.value.clone(),
            when: s.when.as_ref().map(|w| w.value.clone()),
            kind,
            attempts,
            backoff,
            timeout: duration(b, &s.timeout, &f("timeout")),
            fallback,
            compensate,
            qos_profile: s.qos_profile.as_ref().map(|p| p.value.clone()),
        }
    }

    fn call(&mut self, b: &mut Problems, c: &RawCall, field: &str) -> StepKind {
        if let Some(clusters) = self.known.clusters {
            if !clusters.contains(c.service.value.as_str()) {
                b.err(
                    c.service.referenced,
                    format!("{field}.service"),
                    format!(
                        "unknown service {:?} (no cluster of that name)",
                        c.service.value
                    ),
                );
            }
        }
        if let Some(p) = &c.path {
            self.template(b, p, &format!("{field}.path"));
        }
        let mut headers = Vec::new();
        for (name, v) in &c.headers {
            let hf = format!("{field}.headers.{name}");
            self.template(b, v, &hf);
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push((h, v.value.clone())),
                Err(e) => b.err(v.referenced, hf, format!("bad header name {name:?}: {e}")),
            }
        }
        if let Some(body) = &c.body {
            self.template(b, body, &format!("{field}.body"));
        }
        StepKind::Call(Call {
            service: c.service.value.clone(),
            method: match &c.method {
                Some(m) => http::Method::from_bytes(m.value.as_bytes()).unwrap_or_else(|e| {
                    b.err(
                        m.referenced,
                        format!("{field}.method"),
                        format!("expected an HTTP method, found {:?}: {e}", m.value),
                    );
                    http::Method::GET
                }),
                None if c.body.is_some() => http::Method::POST,
                None => http::Method::GET,
            },
            path: c
                .path
                .as_ref()
                .map_or_else(|| "/".to_string(), |p| p.value.clone()),
            headers,
            body: c.body.as_ref().map(|b| b.value.clone()),
        })
    }

    /// Workflows that call themselves through others.
    fn cycles(&self, b: &mut Problems) {
        'workflows: for (start, (at, field, _)) in &self.calls {
            // Depth-first from `start`; a path back to it is a cycle.
            let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
            let mut visited = HashSet::new();
            while let Some((w, path)) = stack.pop() {
                for next in self
                    .calls
                    .get(&w)
                    .map(|c| c.2.as_slice())
                    .unwrap_or_default()
                {
                    if next == start {
                        let mut cycle = path.clone();
                        cycle.push(next.clone());
                        b.err(
                            *at,
                            field.clone(),
                            format!("a cycle of workflows: {}", cycle.join(" -> ")),
                        );
                        continue 'workflows;
                    }
                    if visited.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A definition nested deeper than any workflow needs is refused (serde-saphyr's
    /// recursion limit) before the recursive parse can exhaust a worker thread's stack
    /// (tokio's 2 MiB): a REST PUT of one must get a 400, not abort the control plane.
    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let mut steps = "{ name: leaf, call: { service: s } }".to_string();
        for i in 0..700 {
            steps = format!("{{ name: s{i}, for_each: {{ items: \"[1]\" }}, steps: [ {steps} ] }}");
        }
        let text = format!("name: deep\nsteps: [ {steps} ]\n");
        let res = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || parse(&text).map(|_| ()))
            .unwrap()
            .join()
            .expect("the parse returns");
        let e = res.unwrap_err();
        assert!(e.message.contains("recursion limit exceeded"), "{e:?}");
    }
}
