//! Prometheus' alert templates: Go `text/template` syntax over the alert's data, with
//! `$labels`, `$externalLabels`, `$externalURL` and `$value` defined as Prometheus defines
//! them, and Prometheus' template functions.
//!
//! Written here rather than taken from a crate: `gtmpl` (0.7, the one Go-template crate on
//! crates.io) registers functions as plain `fn` pointers, so `query` could not reach the
//! tenant's data or the evaluation time, and its messages differ from Go's. This module is
//! the subset alert templates use: see [`parse`] for the syntax and [`funcs`] for the
//! functions. `define`/`template`/`block` and `break`/`continue` are refused at parse time.
//!
//! [`Template::expand`] never fails: an execution error becomes the text Prometheus writes,
//! `<error expanding template: …>`.

mod exec;
mod funcs;
mod gofmt;
mod parse;

use std::collections::BTreeMap;

pub use exec::{MAX_OUTPUT, QueryFn, Value};

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus' API prints an alert's value.
pub fn format_value(v: f64) -> String {
    gofmt::fmt_e_shortest(v)
}

/// Variables Prometheus defines before every alert template.
const VARS: [&str; 4] = ["$labels", "$externalLabels", "$externalURL", "$value"];

/// A parsed label or annotation template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    name: String,
    body: parse::List,
    uses_query: bool,
}

/// What an alert's templates are expanded with.
pub struct AlertData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub value: f64,
}

impl Template {
    /// Parses `text` as the template of alert `alert` (Prometheus names it `__alert_<name>`);
    /// the error is Go's parse error text.
    pub fn parse(alert: &str, text: &str) -> Result<Template, String> {
        let name = format!("__alert_{alert}");
        let body = parse::parse(text, &name, &VARS, &funcs::names())
            .map_err(|e| format!("error parsing template {name}: {e}"))?;
        let uses_query = text.contains("query");
        Ok(Template {
            name,
            body,
            uses_query,
        })
    }

    /// True if expanding may call `query` (so the caller runs it where it can block).
    pub fn uses_query(&self) -> bool {
        self.uses_query
    }

    /// True if the template is plain text (no action): expanding gives it back.
    pub fn is_static(&self) -> bool {
        self.body.iter().all(|n| matches!(n, parse::Node::Text(_)))
    }

    /// The expansion, or Prometheus' `<error expanding template: …>` text.
    pub fn expand(&self, d: &AlertData<'_>, query: &mut QueryFn<'_>) -> String {
        let data = Value::Struct(
            "template.AlertTemplateData",
            vec![
                ("Labels", Value::labels(d.labels)),
                ("ExternalLabels", Value::labels(d.external_labels)),
                ("ExternalURL", Value::Str(d.external_url.to_string())),
                ("Value", Value::Float(d.value)),
            ],
        );
        let vars = vec![
            ("$labels".to_string(), Value::labels(d.labels)),
            (
                "$externalLabels".to_string(),
                Value::labels(d.external_labels),
            ),
            (
                "$externalURL".to_string(),
                Value::Str(d.external_url.to_string()),
            ),
            ("$value".to_string(), Value::Float(d.value)),
        ];
        let mut env = exec::Env {
            query,
            external_url: d.external_url,
        };
        match exec::execute(&self.body, &data, vars, &mut env) {
            Ok(s) => s,
            Err(e) => format!(
                "<error expanding template: error executing template {}: template: {}: {e}>",
                self.name, self.name
            ),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
