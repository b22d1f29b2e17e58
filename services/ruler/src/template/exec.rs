//! Executes a parsed template over Prometheus' alert data (`.Labels`, `.ExternalLabels`,
//! `.ExternalURL`, `.Value`) with Go's built-in functions and Prometheus' template functions.
//! Output is bounded ([`MAX_OUTPUT`]): a `range` over a large query result cannot grow an
//! annotation without limit.

use std::collections::BTreeMap;

use super::gofmt::{fmt_float, fmt_g};
use super::parse::{Arg, Command, List, Node, Pipeline};

/// Longest expansion accepted, in bytes.
pub const MAX_OUTPUT: usize = 64 << 10;

/// A template value (the Go types Prometheus' templates see).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A missing map key (prints `<no value>`).
    NoValue,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `map[string]string` (labels) or `map[string]interface{}` (`args`).
    Map(BTreeMap<String, Value>),
    List(Vec<Value>),
    /// A struct: the alert data, or a query result sample (`Labels`, `Value`).
    Struct(&'static str, Vec<(&'static str, Value)>),
}

impl Value {
    pub fn labels(m: &BTreeMap<String, String>) -> Value {
        Value::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
                .collect(),
        )
    }

    pub fn sample(labels: &BTreeMap<String, String>, v: f64) -> Value {
        Value::Struct(
            "*template.sample",
            vec![
                ("Labels", Value::labels(labels)),
                ("Value", Value::Float(v)),
            ],
        )
    }

    /// `fmt.Sprint(v)`.
    pub fn print(&self) -> String {
        match self {
            Value::NoValue => "<no value>".into(),
            Value::Nil => "<nil>".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => fmt_float(*f),
            Value::Str(s) => s.clone(),
            Value::Map(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.print()))
                    .collect();
                format!("map[{}]", parts.join(" "))
            }
            Value::List(l) => {
                let parts: Vec<String> = l.iter().map(Value::print).collect();
                format!("[{}]", parts.join(" "))
            }
            Value::Struct(t, fs) => {
                let parts: Vec<String> = fs.iter().map(|(_, v)| v.print()).collect();
                let amp = if t.starts_with('*') { "&" } else { "" };
                format!("{amp}{{{}}}", parts.join(" "))
            }
        }
    }

    pub fn go_type(&self) -> &'static str {
        match self {
            Value::NoValue | Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::Map(_) => "map[string]string",
            Value::List(_) => "[]interface {}",
            Value::Struct(t, _) => t,
        }
    }

    /// Go's `truth`: zero values and empty collections are false.
    pub fn truth(&self) -> bool {
        match self {
            Value::NoValue | Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Struct(..) => true,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn field(&self, name: &str) -> Result<Value, String> {
        match self {
            Value::Map(m) => Ok(m.get(name).cloned().unwrap_or(Value::NoValue)),
            Value::Struct(t, fs) => fs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("can't evaluate field {name} in type {t}")),
            Value::NoValue | Value::Nil => Ok(Value::NoValue),
            other => Err(format!(
                "can't evaluate field {name} in type {}",
                other.go_type()
            )),
        }
    }
}

/// Runs `query` for the `query` template function: the instant vector at the alert's
/// evaluation time, as (labels, value) pairs.
pub type QueryFn<'a> = dyn FnMut(&str) -> Result<Vec<(BTreeMap<String, String>, f64)>, String> + 'a;

/// Everything a template may consult besides its data.
pub struct Env<'a> {
    pub query: &'a mut QueryFn<'a>,
    pub external_url: &'a str,
}

struct Exec<'e, 'a> {
    env: &'e mut Env<'a>,
    vars: Vec<(String, Value)>,
    out: String,
}

/// Runs `list` with `data` as dot; `vars` are defined first (`$labels`, …).
pub fn execute(
    list: &List,
    data: &Value,
    vars: Vec<(String, Value)>,
    env: &mut Env<'_>,
) -> Result<String, String> {
    let mut vs = vec![("$".to_string(), data.clone())];
    vs.extend(vars);
    let mut e = Exec {
        env,
        vars: vs,
        out: String::new(),
    };
    e.list(list, data)?;
    Ok(e.out)
}

impl Exec<'_, '_> {
    fn emit(&mut self, s: &str) -> Result<(), String> {
        if self.out.len() + s.len() > MAX_OUTPUT {
            return Err(format!("template output exceeds {MAX_OUTPUT} bytes"));
        }
        self.out.push_str(s);
        Ok(())
    }

    fn list(&mut self, list: &List, dot: &Value) -> Result<(), String> {
        for n in list {
            self.node(n, dot)?;
        }
        Ok(())
    }

    fn scoped(&mut self, list: &List, dot: &Value) -> Result<(), String> {
        let mark = self.vars.len();
        let r = self.list(list, dot);
        self.vars.truncate(mark);
        r
    }

    fn node(&mut self, n: &Node, dot: &Value) -> Result<(), String> {
        match n {
            Node::Text(t) => self.emit(t),
            Node::Action(p) => {
                let v = self.pipeline(p, dot)?;
                if p.decl.is_empty() {
                    let s = v.print();
                    self.emit(&s)?;
                }
                Ok(())
            }
            Node::If {
                branches,
                otherwise,
            } => {
                let mark = self.vars.len();
                for (cond, body) in branches {
                    if self.pipeline(cond, dot)?.truth() {
                        let r = self.scoped(body, dot);
                        self.vars.truncate(mark);
                        return r;
                    }
                }
                let r = self.scoped(otherwise, dot);
                self.vars.truncate(mark);
                r
            }
            Node::With {
                pipe,
                body,
                otherwise,
            } => {
                let mark = self.vars.len();
                let v = self.pipeline(pipe, dot)?;
                let r = if v.truth() {
                    self.scoped(body, &v)
                } else {
                    self.scoped(otherwise, dot)
                };
                self.vars.truncate(mark);
                r
            }
            Node::Range {
                pipe,
                body,
                otherwise,
            } => {
                let mark = self.vars.len();
                // Declared variables are bound per element, not to the whole value.
                let inner = Pipeline {
                    decl: Vec::new(),
                    assign: false,
                    cmds: pipe.cmds.clone(),
                };
                let v = self.pipeline(&inner, dot)?;
                let items: Vec<(Value, Value)> = match v {
                    Value::List(l) => l
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (Value::Int(i as i64), v))
                        .collect(),
                    Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                    Value::Int(n) if n >= 0 => (0..n.min(100_000))
                        .map(|i| (Value::Int(i), Value::Int(i)))
                        .collect(),
                    Value::NoValue | Value::Nil => Vec::new(),
                    other => return Err(format!("range can't iterate over {}", other.print())),
                };
                if items.is_empty() {
                    let r = self.scoped(otherwise, dot);
                    self.vars.truncate(mark);
                    return r;
                }
                for (k, v) in items {
                    let m2 = self.vars.len();
                    match pipe.decl.as_slice() {
                        [one] => self.vars.push((one.clone(), v.clone())),
                        [a, b] => {
                            self.vars.push((a.clone(), k));
                            self.vars.push((b.clone(), v.clone()));
                        }
                        _ => {}
                    }
                    let r = self.list(body, &v);
                    self.vars.truncate(m2);
                    r?;
                }
                self.vars.truncate(mark);
                Ok(())
            }
        }
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &Value) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for c in &p.cmds {
            prev = Some(self.command(c, dot, prev)?);
        }
        let v = prev.unwrap_or(Value::NoValue);
        for name in &p.decl {
            if p.assign {
                if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    slot.1 = v.clone();
                }
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn command(&mut self, c: &Command, dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        if let Arg::Func(name) = &c.args[0] {
            let mut args = Vec::with_capacity(c.args.len());
            // `and`/`or` short-circuit, as in Go.
            if name == "and" || name == "or" {
                let mut last = Value::Nil;
                let n = c.args.len() - 1 + usize::from(piped.is_some());
                if n == 0 {
                    return Err(format!(
                        "wrong number of args for {name}: want at least 1 got 0"
                    ));
                }
                for a in &c.args[1..] {
                    last = self.arg(a, dot)?;
                    if last.truth() != (name == "and") {
                        return Ok(last);
                    }
                }
                if let Some(p) = piped {
                    last = p;
                }
                return Ok(last);
            }
            for a in &c.args[1..] {
                args.push(self.arg(a, dot)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            return self
                .call(name, args)
                .map_err(|e| format!("error calling {name}: {e}"));
        }
        self.arg(&c.args[0], dot)
    }

    fn arg(&mut self, a: &Arg, dot: &Value) -> Result<Value, String> {
        let (base, fields) = match a {
            Arg::Dot(fs) => (dot.clone(), fs),
            Arg::Var(name, fs) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("undefined variable: {name}"))?;
                (v, fs)
            }
            Arg::Sub(p, fs) => (self.pipeline(p, dot)?, fs),
            Arg::Func(name) => {
                return self
                    .call(name, Vec::new())
                    .map_err(|e| format!("error calling {name}: {e}"));
            }
            Arg::Str(s) => return Ok(Value::Str(s.clone())),
            Arg::Int(i) => return Ok(Value::Int(*i)),
            Arg::Float(f) => return Ok(Value::Float(*f)),
            Arg::Bool(b) => return Ok(Value::Bool(*b)),
            Arg::Nil => return Ok(Value::Nil),
        };
        let mut v = base;
        for f in fields {
            v = v.field(f)?;
        }
        Ok(v)
    }

    fn call(&mut self, name: &str, args: Vec<Value>) -> Result<Value, String> {
        super::funcs::call(name, args, self.env)
    }
}

/// Go's `eq`/`lt`… comparison of two basic values.
pub fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (x, y) if x.as_f64().is_some() && y.as_f64().is_some() => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            Ok(x.partial_cmp(&y).unwrap_or(Ordering::Less))
        }
        (Value::NoValue | Value::Nil, Value::NoValue | Value::Nil) => Ok(Ordering::Equal),
        _ => Err("incompatible types for comparison".into()),
    }
}

/// `%.4g` (what every `humanize*` function prints).
pub fn g4(v: f64) -> String {
    fmt_g(v, Some(4), false)
}
