//! Lexer and parser for the Go `text/template` syntax Prometheus' alert templates use:
//! text and `{{ }}` actions with `{{-`/`-}}` trimming and `/* */` comments, pipelines of
//! commands joined by `|`, variables (`$x := …`, `$x = …`), fields (`.Labels.job`,
//! `$labels.job`, `(…).Value`), string/raw-string/number/bool/nil literals, and the
//! `if`/`else if`/`else`, `range` (with `$i, $v :=`), `with` and `end` structures.
//!
//! Undefined functions and variables are parse errors, as in Go, so a bad template is refused
//! when the rule is uploaded rather than when the alert fires.

use std::collections::BTreeSet;

/// A parsed template body.
pub type List = Vec<Node>;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Text(String),
    Action(Pipeline),
    If {
        branches: Vec<(Pipeline, List)>,
        otherwise: List,
    },
    Range {
        pipe: Pipeline,
        body: List,
        otherwise: List,
    },
    With {
        pipe: Pipeline,
        body: List,
        otherwise: List,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Variables declared (`:=`) or assigned (`=`) by the pipeline.
    pub decl: Vec<String>,
    pub assign: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `.` or `.a.b` (fields of dot).
    Dot(Vec<String>),
    /// `$x` or `$x.a.b`.
    Var(String, Vec<String>),
    Func(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    /// `(pipeline)` or `(pipeline).a.b`.
    Sub(Box<Pipeline>, Vec<String>),
}

/// Deepest nesting of control structures and parentheses accepted.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Field(String),
    Dot,
    Var(String),
    Str(String),
    Num(String),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

/// One `{{ }}` action, tokenised, with the line it starts on.
struct Action {
    toks: Vec<(Tok, bool)>, // token, preceded by space
    line: usize,
}

enum Piece {
    Text(String),
    Action(Action),
}

fn lex(src: &str, name: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let t = if trim_next { rest.trim_start() } else { rest };
            out.push(Piece::Text(t.to_string()));
            break;
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let mut body = &rest[open + 2..];
        line += rest[..open].matches('\n').count();
        if body.starts_with("- ") || body.starts_with("-\t") || body.starts_with("-\n") {
            text = text.trim_end();
            body = &body[1..];
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_string()));
        }
        let start_line = line;
        // Comments.
        let trimmed = body.trim_start();
        if trimmed.starts_with("/*") {
            let Some(end) = trimmed.find("*/") else {
                return Err(format!("template: {name}:{line}: unclosed comment"));
            };
            let after = trimmed[end + 2..].trim_start();
            let (close_len, trim) = if after.starts_with("-}}") {
                (3, true)
            } else if after.starts_with("}}") {
                (2, false)
            } else {
                return Err(format!(
                    "template: {name}:{line}: comment ends before closing delimiter"
                ));
            };
            line += trimmed[..end].matches('\n').count();
            trim_next = trim;
            rest = &after[close_len..];
            continue;
        }
        let (toks, consumed, trim) = lex_action(body, name, start_line)?;
        line += body[..consumed].matches('\n').count();
        trim_next = trim;
        out.push(Piece::Action(Action {
            toks,
            line: start_line,
        }));
        rest = &body[consumed..];
    }
    Ok(out)
}

/// Tokens of one action up to its `}}`: (tokens, bytes consumed incl. the delimiter, trim).
/// Tokens of an action (each with whether a space preceded it), bytes used, right trim.
type Lexed = (Vec<(Tok, bool)>, usize, bool);

fn lex_action(s: &str, name: &str, line: usize) -> Result<Lexed, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut toks = Vec::new();
    let mut space = false;
    let err = |m: &str| format!("template: {name}:{line}: {m}");
    loop {
        if i >= b.len() {
            return Err(err("unclosed action"));
        }
        let c = b[i];
        if c.is_ascii_whitespace() {
            if s[i..].trim_start().starts_with("-}}") {
                let j = i + (s[i..].len() - s[i..].trim_start().len());
                return Ok((toks, j + 3, true));
            }
            space = true;
            i += 1;
            continue;
        }
        if s[i..].starts_with("}}") {
            return Ok((toks, i + 2, false));
        }
        let tok = match c {
            b'|' => {
                i += 1;
                Tok::Pipe
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b':' if b.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::Declare
            }
            b'=' => {
                i += 1;
                Tok::Assign
            }
            b'"' => {
                let (v, n) =
                    lex_string(&s[i..]).ok_or_else(|| err("unterminated quoted string"))?;
                i += n;
                Tok::Str(v)
            }
            b'`' => {
                let end = s[i + 1..]
                    .find('`')
                    .ok_or_else(|| err("unterminated raw quoted string"))?;
                let v = s[i + 1..i + 1 + end].to_string();
                i += end + 2;
                Tok::Str(v)
            }
            b'$' => {
                let n = ident_len(&b[i + 1..]);
                let v = s[i..i + 1 + n].to_string();
                i += 1 + n;
                Tok::Var(v)
            }
            b'.' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
            {
                let n = ident_len(&b[i + 1..]);
                let v = s[i + 1..i + 1 + n].to_string();
                i += 1 + n;
                Tok::Field(v)
            }
            b'.' if !b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) => {
                i += 1;
                Tok::Dot
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric()
                        || b[j] == b'.'
                        || b[j] == b'_'
                        || ((b[j] == b'-' || b[j] == b'+') && matches!(b[j - 1], b'e' | b'E')))
                {
                    j += 1;
                }
                let v = s[i..j].to_string();
                i = j;
                Tok::Num(v)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let n = ident_len(&b[i..]);
                let v = s[i..i + n].to_string();
                i += n;
                Tok::Ident(v)
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(err(&format!("unexpected {ch:?} in command")));
            }
        };
        toks.push((tok, space));
        space = false;
    }
}

fn ident_len(b: &[u8]) -> usize {
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// A Go interpreted string literal at the start of `s`: (value, bytes).
fn lex_string(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\n' => return None,
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut hex = String::new();
                        for _ in 0..n {
                            hex.push(chars.next()?.1);
                        }
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

/// What ends a list: `{{end}}`, `{{else}}` or `{{else if …}}`/`{{else with …}}`.
enum End {
    Eof,
    Close,
    Else(Option<(String, Vec<(Tok, bool)>)>),
}

struct Parser<'a> {
    pieces: std::vec::IntoIter<Piece>,
    name: &'a str,
    funcs: &'a BTreeSet<&'static str>,
    vars: Vec<String>,
    line: usize,
}

/// Parses `src`; `vars` are the variables defined before it (`$labels`, …), `funcs` the
/// functions it may call.
pub fn parse(
    src: &str,
    name: &str,
    vars: &[&str],
    funcs: &BTreeSet<&'static str>,
) -> Result<List, String> {
    let pieces = lex(src, name)?;
    let mut p = Parser {
        pieces: pieces.into_iter(),
        name,
        funcs,
        vars: std::iter::once("$".to_string())
            .chain(vars.iter().map(|v| v.to_string()))
            .collect(),
        line: 1,
    };
    let (list, end) = p.list(0)?;
    match end {
        End::Eof => Ok(list),
        End::Close => Err(p.err("unexpected {{end}}")),
        End::Else(_) => Err(p.err("unexpected {{else}}")),
    }
}

impl Parser<'_> {
    fn err(&self, m: &str) -> String {
        format!("template: {}:{}: {m}", self.name, self.line)
    }

    fn list(&mut self, depth: usize) -> Result<(List, End), String> {
        if depth > MAX_DEPTH {
            return Err(self.err("control structures nested too deeply"));
        }
        let mut out = Vec::new();
        while let Some(piece) = self.pieces.next() {
            let a = match piece {
                Piece::Text(t) => {
                    out.push(Node::Text(t));
                    continue;
                }
                Piece::Action(a) => a,
            };
            self.line = a.line;
            let mut toks = a.toks;
            let Some((first, _)) = toks.first().cloned() else {
                return Err(self.err("missing value for command"));
            };
            let keyword = match &first {
                Tok::Ident(k) => k.as_str(),
                _ => "",
            };
            match keyword {
                "end" => {
                    if toks.len() > 1 {
                        return Err(self.err("unexpected tokens after end"));
                    }
                    return Ok((out, End::Close));
                }
                "else" => {
                    toks.remove(0);
                    if toks.is_empty() {
                        return Ok((out, End::Else(None)));
                    }
                    match toks.remove(0).0 {
                        Tok::Ident(k) if k == "if" || k == "with" => {
                            return Ok((out, End::Else(Some((k, toks)))));
                        }
                        _ => return Err(self.err("unexpected tokens after else")),
                    }
                }
                "if" | "with" | "range" => {
                    toks.remove(0);
                    out.push(self.control(keyword.to_string(), toks, depth)?);
                }
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(self.err(&format!(
                        "{{{{{keyword}}}}} is not supported in alert templates"
                    )));
                }
                _ => {
                    let pipe = self.pipeline(&toks, true)?;
                    out.push(Node::Action(pipe));
                }
            }
        }
        Ok((out, End::Eof))
    }

    fn control(
        &mut self,
        kw: String,
        toks: Vec<(Tok, bool)>,
        depth: usize,
    ) -> Result<Node, String> {
        let scope = self.vars.len();
        let pipe = self.pipeline(&toks, true)?;
        if pipe.cmds.is_empty() {
            return Err(self.err(&format!("missing value for {kw}")));
        }
        let (body, end) = self.list(depth + 1)?;
        let otherwise = match end {
            End::Eof => return Err(self.err(&format!("unexpected EOF in {kw}"))),
            End::Close => Vec::new(),
            End::Else(None) => {
                // Variables declared by the pipeline are not visible in the else branch of
                // range/with in Go either way; keep them (harmless).
                let (e, end) = self.list(depth + 1)?;
                if !matches!(end, End::Close) {
                    return Err(self.err(&format!("expected end in {kw}")));
                }
                e
            }
            End::Else(Some((k2, t2))) => {
                // `else if`: an if nested in the else branch, sharing this end.
                vec![self.control(k2, t2, depth + 1)?]
            }
        };
        self.vars.truncate(scope);
        Ok(match kw.as_str() {
            "if" => Node::If {
                branches: vec![(pipe, body)],
                otherwise,
            },
            "with" => Node::With {
                pipe,
                body,
                otherwise,
            },
            _ => Node::Range {
                pipe,
                body,
                otherwise,
            },
        })
    }

    fn pipeline(&mut self, toks: &[(Tok, bool)], allow_decl: bool) -> Result<Pipeline, String> {
        let mut i = 0;
        let mut decl = Vec::new();
        let mut assign = false;
        // `$x :=`, `$x =`, `$i, $v :=`.
        if allow_decl {
            let mut j = 0;
            let mut names = Vec::new();
            while let Some((Tok::Var(v), _)) = toks.get(j) {
                names.push(v.clone());
                match toks.get(j + 1).map(|t| &t.0) {
                    Some(Tok::Comma) if names.len() < 2 => j += 2,
                    Some(Tok::Declare) | Some(Tok::Assign) => {
                        assign = toks[j + 1].0 == Tok::Assign;
                        decl = names.clone();
                        i = j + 2;
                        break;
                    }
                    _ => break,
                }
            }
        }
        let mut cmds = Vec::new();
        let mut cur = Vec::new();
        let mut depth = 0usize;
        let mut start = i;
        // Split on top-level pipes.
        let mut parts: Vec<&[(Tok, bool)]> = Vec::new();
        while i < toks.len() {
            match toks[i].0 {
                Tok::LParen => depth += 1,
                Tok::RParen => {
                    if depth == 0 {
                        return Err(self.err("unexpected right paren"));
                    }
                    depth -= 1
                }
                Tok::Pipe if depth == 0 => {
                    parts.push(&toks[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        if depth != 0 {
            return Err(self.err("unclosed left paren"));
        }
        if start < toks.len() || !parts.is_empty() {
            parts.push(&toks[start..]);
        }
        for part in parts {
            if part.is_empty() {
                return Err(self.err("missing command in pipeline"));
            }
            cur.clear();
            let mut k = 0;
            while k < part.len() {
                let (arg, n) = self.operand(&part[k..])?;
                cur.push(arg);
                k += n;
            }
            if cur.len() > 1 && !matches!(cur[0], Arg::Func(_)) {
                return Err(self.err(&format!("can't give argument to non-function {:?}", cur[0])));
            }
            cmds.push(Command { args: cur.clone() });
        }
        for (n, c) in cmds.iter().enumerate() {
            if n > 0 && !matches!(c.args[0], Arg::Func(_)) {
                return Err(self.err("non executable command in pipeline stage"));
            }
        }
        if !decl.is_empty() {
            if cmds.is_empty() {
                return Err(self.err("missing value for declaration"));
            }
            for v in &decl {
                if assign {
                    if !self.vars.contains(v) {
                        return Err(self.err(&format!("undefined variable \"{v}\"")));
                    }
                } else {
                    self.vars.push(v.clone());
                }
            }
        }
        Ok(Pipeline { decl, assign, cmds })
    }

    /// One operand and the tokens it used (a term followed by field accesses written without
    /// spaces).
    fn operand(&mut self, t: &[(Tok, bool)]) -> Result<(Arg, usize), String> {
        let (arg, mut n) = match &t[0].0 {
            Tok::Dot => (Arg::Dot(Vec::new()), 1),
            Tok::Field(f) => (Arg::Dot(vec![f.clone()]), 1),
            Tok::Var(v) => {
                if !self.vars.contains(v) {
                    return Err(self.err(&format!("undefined variable \"{v}\"")));
                }
                (Arg::Var(v.clone(), Vec::new()), 1)
            }
            Tok::Str(s) => (Arg::Str(s.clone()), 1),
            Tok::Num(s) => (
                number(s).ok_or_else(|| self.err(&format!("bad number syntax: {s:?}")))?,
                1,
            ),
            Tok::Ident(id) => match id.as_str() {
                "true" => (Arg::Bool(true), 1),
                "false" => (Arg::Bool(false), 1),
                "nil" => (Arg::Nil, 1),
                f if self.funcs.contains(f) => (Arg::Func(f.to_string()), 1),
                f => return Err(self.err(&format!("function \"{f}\" not defined"))),
            },
            Tok::LParen => {
                let mut depth = 0;
                let mut end = None;
                for (k, (tok, _)) in t.iter().enumerate() {
                    match tok {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(k);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| self.err("unclosed left paren"))?;
                let inner = self.pipeline(&t[1..end], false)?;
                if inner.cmds.is_empty() {
                    return Err(self.err("missing value for parenthesized pipeline"));
                }
                (Arg::Sub(Box::new(inner), Vec::new()), end + 1)
            }
            other => return Err(self.err(&format!("unexpected {other:?} in operand"))),
        };
        let mut arg = arg;
        // Chained fields: `$x.a.b`, `(…).Value`, `.a.b`.
        while let Some((Tok::Field(f), false)) = t.get(n) {
            match &mut arg {
                Arg::Dot(fs) | Arg::Var(_, fs) | Arg::Sub(_, fs) => fs.push(f.clone()),
                _ => return Err(self.err(&format!("unexpected .{f} after a literal"))),
            }
            n += 1;
        }
        Ok((arg, n))
    }
}

fn number(s: &str) -> Option<Arg> {
    let clean = s.replace('_', "");
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, clean.trim_start_matches('+').to_string()),
    };
    let int = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(bi) = body.strip_prefix("0b") {
        i64::from_str_radix(bi, 2).ok()
    } else {
        body.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Some(Arg::Int(if neg { -i } else { i }));
    }
    let f: f64 = body.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    Some(Arg::Float(if neg { -f } else { f }))
}
