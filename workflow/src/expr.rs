//! Expressions and templates of workflows (minijinja, Jinja2's syntax): conditions such
//! as `steps.user.status == 200 and steps.user.body.vip`, selections such as
//! `steps.cart.body.items`, and templated paths, headers and bodies such as
//! `/users/{{ input.id | urlencode }}` or `{"items": {{ steps.cart.body.items | tojson }}}`.
//!
//! Checked when a workflow is loaded (a syntax error is a config error); evaluated
//! against the run's context (`input`, `headers`, `steps`, loop variables). A missing
//! field is undefined (falsy, and undefined again when indexed), never an error, so a
//! branch can test for what an answer lacks.

use std::sync::LazyLock;

pub use minijinja::Value;
use minijinja::{Environment, UndefinedBehavior};

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env
});

/// The context expressions see, from JSON.
pub fn context(json: &serde_json::Value) -> Value {
    Value::from_serialize(json)
}

/// A syntax error in an expression, in one line.
pub fn check_expression(src: &str) -> Result<(), String> {
    ENV.compile_expression(src)
        .map(drop)
        .map_err(|e| one_line(&e))
}

/// A syntax error in a template, in one line.
pub fn check_template(src: &str) -> Result<(), String> {
    ENV.template_from_str(src)
        .map(drop)
        .map_err(|e| one_line(&e))
}

/// The expression's value, as JSON (undefined is `null`).
pub fn eval(src: &str, ctx: &Value) -> Result<serde_json::Value, String> {
    let v = ENV
        .compile_expression(src)
        .and_then(|e| e.eval(ctx))
        .map_err(|e| one_line(&e))?;
    if v.is_undefined() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Whether the expression holds (Jinja's truthiness).
pub fn holds(src: &str, ctx: &Value) -> Result<bool, String> {
    ENV.compile_expression(src)
        .and_then(|e| e.eval(ctx))
        .map(|v| v.is_true())
        .map_err(|e| one_line(&e))
}

/// The template rendered.
pub fn render(src: &str, ctx: &Value) -> Result<String, String> {
    // Plain text (a fixed path or header) needs no parse.
    if !src.contains('{') {
        return Ok(src.to_string());
    }
    ENV.render_str(src, ctx).map_err(|e| one_line(&e))
}

fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_selections_and_templates_see_the_context() {
        let ctx = context(&serde_json::json!({
            "input": {"id": "a b"},
            "steps": {"user": {"status": 200, "body": {"vip": true, "items": [1, 2]}}}
        }));
        assert!(holds("steps.user.status == 200 and steps.user.body.vip", &ctx).unwrap());
        assert!(
            !holds("steps.missing.body.vip", &ctx).unwrap(),
            "undefined is falsy"
        );
        assert_eq!(
            eval("steps.user.body.items", &ctx).unwrap(),
            serde_json::json!([1, 2])
        );
        assert_eq!(eval("steps.nope", &ctx).unwrap(), serde_json::Value::Null);
        assert_eq!(
            render("/users/{{ input.id | urlencode }}", &ctx).unwrap(),
            "/users/a%20b"
        );
        assert_eq!(
            render(r#"{"items": {{ steps.user.body.items | tojson }}}"#, &ctx).unwrap(),
            r#"{"items": [1,2]}"#
        );
        let e = check_expression("steps.user.status ==").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        assert!(check_template("{{ input.id ").is_err());
    }
}
