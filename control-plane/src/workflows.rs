//! Composite services in the control plane: a workflow definition (the schema of the
//! proxy config's `workflows[]`, `presage_workflow::spec`) is checked before it is stored
//! (with the stored workflows it may run as steps, and the QoS profiles it names), and
//! each workflow's constituents, the services its steps call transitively, are what a
//! user predicted to call the workflow will call too.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use presage_api::Workflow;
use presage_workflow::{Known, RawWorkflow, WorkflowSpec};

use crate::validate::FieldError;

fn located(p: presage_workflow::Problem) -> FieldError {
    let at = if p.at.line() > 0 {
        format!(" (line {}, column {})", p.at.line(), p.at.column())
    } else {
        String::new()
    };
    FieldError {
        field: p.field,
        message: format!("{}{at}", p.message),
    }
}

/// The stored definitions that still parse, but `except`.
fn parsed(stored: &[Workflow], except: &str) -> Vec<RawWorkflow> {
    stored
        .iter()
        .filter(|w| w.name != except)
        .filter_map(|w| presage_workflow::parse(&w.definition).ok())
        .collect()
}

/// Checks `text` as the definition of workflow `name`, among the `stored` ones (and the
/// QoS profiles it names, when `profiles` are known); the resource to store (its
/// services resolved).
pub fn check(
    name: &str,
    text: &str,
    stored: &[Workflow],
    profiles: Option<&HashSet<&str>>,
) -> Result<Workflow, Vec<FieldError>> {
    let raw = presage_workflow::parse(text).map_err(|p| vec![located(p)])?;
    if raw.name.value != name {
        return Err(vec![FieldError {
            field: "name".into(),
            message: format!(
                "{:?} differs from the name in the path, {name:?}",
                raw.name.value
            ),
        }]);
    }
    let mut all = vec![raw];
    all.extend(parsed(stored, name));
    let known = Known {
        clusters: None,
        profiles,
    };
    let specs = presage_workflow::build(&all, None, &known)
        .map_err(|ps| ps.into_iter().map(located).collect::<Vec<_>>())?;
    let services = resolve(&specs)
        .remove(name)
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Workflow {
        name: name.to_string(),
        definition: text.to_string(),
        services,
    })
}

/// The stored workflows, built (none if they no longer build together).
fn built(stored: &[Workflow]) -> Vec<Arc<WorkflowSpec>> {
    presage_workflow::build(&parsed(stored, ""), None, &Known::default()).unwrap_or_default()
}

/// The names of the stored workflows for which `pick` holds.
fn named(stored: &[Workflow], pick: impl Fn(&WorkflowSpec) -> bool) -> Vec<String> {
    built(stored)
        .iter()
        .filter(|s| pick(s))
        .map(|s| s.name.clone())
        .collect()
}

/// The stored workflows that name QoS profile `profile`, for themselves or a step.
pub fn using_profile(profile: &str, stored: &[Workflow]) -> Vec<String> {
    named(stored, |s| s.profiles().contains(profile))
}

/// The stored workflows that run `name` as a step.
pub fn callers(name: &str, stored: &[Workflow]) -> Vec<String> {
    named(stored, |s| s.name != name && s.runs().contains(&name))
}

/// Workflow -> the services its steps call, through the workflows it runs.
pub fn constituents(stored: &[Workflow]) -> BTreeMap<String, BTreeSet<String>> {
    resolve(&built(stored))
}

fn resolve(specs: &[Arc<WorkflowSpec>]) -> BTreeMap<String, BTreeSet<String>> {
    let by_name: BTreeMap<&str, &WorkflowSpec> =
        specs.iter().map(|s| (s.name.as_str(), &**s)).collect();
    let mut out = BTreeMap::new();
    for s in specs {
        let mut services = BTreeSet::new();
        let mut todo = vec![s.name.as_str()];
        let mut seen = HashSet::new();
        while let Some(w) = todo.pop() {
            let Some(spec) = by_name.get(w).filter(|_| seen.insert(w)) else {
                continue;
            };
            services.extend(spec.services());
            todo.extend(spec.runs());
        }
        out.insert(s.name.clone(), services);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, text: &str) -> Workflow {
        check(name, text, &[], None).expect("valid")
    }

    #[test]
    fn definitions_are_checked_with_their_location_and_constituents_resolved() {
        let pay = stored(
            "pay",
            "name: pay\nsteps: [ { name: charge, call: { service: payments } } ]\n",
        );
        let text = "name: checkout\nsteps:\n  - { name: user, call: { service: users } }\n  - { name: p, workflow: pay }\n";
        let w = check("checkout", text, std::slice::from_ref(&pay), None).unwrap();
        assert_eq!(w.services, ["payments", "users"]);
        assert_eq!(callers("pay", &[pay.clone(), w.clone()]), ["checkout"]);
        let c = constituents(&[pay.clone(), w]);
        assert_eq!(
            c["checkout"],
            BTreeSet::from(["payments".into(), "users".into()])
        );

        let e = check("loop", "name: loop\nsteps:\n  - name: spin\n    while: { condition: \"true\" }\n    steps: [ { name: a, call: { service: x } } ]\n", &[], None).unwrap_err();
        assert_eq!(e[0].field, "steps[0] (step \"spin\").while.max");
        assert!(e[0].message.contains("(line 4, column"), "{e:?}");
        let e = check("x", "name: x\nstep: []\n", &[], None).unwrap_err();
        assert!(e[0].message.contains("unknown field `step`"), "{e:?}");
        let e = check(
            "y",
            "name: z\nsteps: [ { name: a, call: { service: s } } ]\n",
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "name");
        let e = check(
            "q",
            "name: q\nqos_profile: nope\nsteps: [ { name: a, call: { service: s } } ]\n",
            &[],
            Some(&HashSet::from(["gold"])),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "qos_profile");
    }

    #[test]
    fn the_workflows_naming_a_profile_are_found_in_their_steps_too() {
        let profiles = HashSet::from(["gold", "silver"]);
        let top = check(
            "top",
            "name: top\nqos_profile: gold\nsteps: [ { name: a, call: { service: s } } ]\n",
            &[],
            Some(&profiles),
        )
        .unwrap();
        let nested = "name: nested\nsteps:\n  - name: each\n    for_each: { items: \"[1]\", as: i }\n    steps: [ { name: b, qos_profile: silver, call: { service: s } } ]\n";
        let nested = check("nested", nested, &[], Some(&profiles)).unwrap();
        let stored = [top, nested];
        assert_eq!(using_profile("gold", &stored), ["top"]);
        assert_eq!(using_profile("silver", &stored), ["nested"]);
        assert!(using_profile("bronze", &stored).is_empty());
    }
}
