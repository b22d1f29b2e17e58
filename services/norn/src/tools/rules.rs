//! `norn tools rules load|list|get|delete|diff|sync|lint --tenant=T`: manage a tenant's rule
//! groups over the ruler's config API, as mimirtool does for Mimir.
//!
//! A rule file is Prometheus' (`groups:`), optionally with a top-level `namespace:` as
//! mimirtool's files have; without one the file's name (without extension) is the namespace.
//! Files are checked whole before anything is sent (`lint`'s checks: YAML, unique group names,
//! durations, names, PromQL), so a bad file changes nothing on the server.
//!
//! - `load FILE…`: uploads every group of every file (creating or replacing it).
//! - `list`, `get NS GROUP`, `delete NS [GROUP]`: what the API's GET and DELETE do.
//! - `diff FILE…`: what `sync` would change: groups to add (`+`), change (`~`), delete (`-`).
//! - `sync FILE…`: makes the server hold exactly the files' groups, in the namespaces the files
//!   name and those on the server (or only `--namespaces`): changed groups are uploaded, groups
//!   the files do not hold are deleted. `--dry-run` prints the plan only.
//! - `lint FILE…`: the checks alone, no server needed.
//!
//! Talks plain HTTP (`--address`); the tenant travels as `X-Scope-OrgID`, and `--user`/`--key`
//! add basic auth for a gateway in front. Every failure is one `error: …` line and exit 1.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use clap::Subcommand;
use norn_model::TenantId;
use norn_ruler::rulefmt::{RuleGroup, check_group, check_unique_names};
use serde::Deserialize;

/// Largest answer read from the API (a tenant's whole rule set as YAML).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// Largest rule file read.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// `norn tools rules`.
#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    /// Norn's HTTP address (the ruler, or a gateway/frontend routing `/prometheus/config/v1/rules`).
    #[arg(long, env = "NORN_ADDRESS", default_value = "http://127.0.0.1:8080")]
    pub address: String,
    /// Tenant (sent as X-Scope-OrgID) whose rules to manage.
    #[arg(long, alias = "id", env = "NORN_TENANT_ID")]
    pub tenant: Option<String>,
    /// Basic-auth user for a gateway in front of Norn.
    #[arg(long, env = "NORN_API_USER")]
    pub user: Option<String>,
    /// Basic-auth password for a gateway in front of Norn.
    #[arg(long, env = "NORN_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Timeout of each request.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Upload every group of the files (create or replace).
    Load { files: Vec<PathBuf> },
    /// List the tenant's namespaces and groups.
    List,
    /// Print one group as YAML.
    Get { namespace: String, group: String },
    /// Delete a namespace, or one group of it.
    Delete {
        namespace: String,
        group: Option<String>,
    },
    /// Show what `sync` would change.
    Diff {
        files: Vec<PathBuf>,
        /// Only these namespaces (comma-separated); default: the files' and the server's.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
    },
    /// Make the server hold exactly the files' groups.
    Sync {
        files: Vec<PathBuf>,
        /// Only these namespaces (comma-separated); default: the files' and the server's.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check rule files (YAML, names, durations, PromQL) without a server.
    Lint { files: Vec<PathBuf> },
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    norn_model::parse_duration(s).map_err(|e| e.to_string())
}

/// A rule file as mimirtool reads it: Prometheus' format plus an optional namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespacedFile {
    #[serde(default)]
    namespace: Option<String>,
    groups: Vec<RuleGroup>,
}

/// Groups by namespace, each namespace's groups by name.
type RuleSet = BTreeMap<String, BTreeMap<String, RuleGroup>>;

pub fn run(args: RulesArgs) -> anyhow::Result<ExitCode> {
    if let RulesCommand::Lint { files } = &args.command {
        return lint(files);
    }
    let api = Api::new(&args)?;
    match args.command {
        RulesCommand::Lint { .. } => unreachable!("handled above"),
        RulesCommand::Load { files } => {
            let wanted = read_files(&files)?;
            let mut n = 0;
            for (ns, groups) in &wanted {
                for g in groups.values() {
                    api.upload(ns, g)?;
                    println!("loaded {ns}/{}", g.name);
                    n += 1;
                }
            }
            println!("{n} group(s) loaded");
        }
        RulesCommand::List => {
            let have = api.all()?;
            if have.is_empty() {
                println!("no rule groups");
            }
            for (ns, groups) in &have {
                for (name, g) in groups {
                    println!("{ns}\t{name}\t{} rule(s)", g.rules.len());
                }
            }
        }
        RulesCommand::Get { namespace, group } => {
            let path = format!("{}/{}", enc(&namespace), enc(&group));
            let text = api.call("GET", &path, None)?.ok_or_else(|| {
                anyhow!("group {group:?} does not exist in namespace {namespace:?}")
            })?;
            print!("{text}");
        }
        RulesCommand::Delete { namespace, group } => {
            let path = match &group {
                Some(g) => format!("{}/{}", enc(&namespace), enc(g)),
                None => enc(&namespace),
            };
            if api.call("DELETE", &path, None)?.is_none() {
                bail!("nothing to delete: {namespace:?} {group:?} not found");
            }
            match group {
                Some(g) => println!("deleted {namespace}/{g}"),
                None => println!("deleted namespace {namespace}"),
            }
        }
        RulesCommand::Diff { files, namespaces } => {
            let plan = Plan::new(&read_files(&files)?, &api.all()?, &namespaces);
            plan.print();
        }
        RulesCommand::Sync {
            files,
            namespaces,
            dry_run,
        } => {
            let plan = Plan::new(&read_files(&files)?, &api.all()?, &namespaces);
            plan.print();
            if !dry_run {
                for (ns, g) in plan.added.iter().chain(&plan.changed) {
                    api.upload(ns, g)?;
                }
                for (ns, name) in &plan.deleted {
                    api.call("DELETE", &format!("{}/{}", enc(ns), enc(name)), None)?;
                }
                println!("synced");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lint`: every problem of every file, then exit 1 if there was one.
fn lint(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if files.is_empty() {
        bail!("no rule files given");
    }
    let mut bad = 0;
    for f in files {
        match read_file(f) {
            Ok((ns, groups)) => println!(
                "{}: ok ({} group(s), namespace {ns:?})",
                f.display(),
                groups.len()
            ),
            Err(e) => {
                bad += 1;
                eprintln!("{}: {e:#}", f.display());
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads and checks every file; two files naming the same namespace are merged (a group
/// name repeated across them is an error, as within one file).
fn read_files(files: &[PathBuf]) -> anyhow::Result<RuleSet> {
    if files.is_empty() {
        bail!("no rule files given");
    }
    let mut out = RuleSet::new();
    for f in files {
        let (ns, groups) = read_file(f).with_context(|| format!("{}", f.display()))?;
        let slot = out.entry(ns.clone()).or_default();
        for g in groups {
            if slot.contains_key(&g.name) {
                bail!(
                    "{}: group {:?} of namespace {ns:?} is also in another file",
                    f.display(),
                    g.name
                );
            }
            slot.insert(g.name.clone(), g);
        }
    }
    Ok(out)
}

/// One file: its namespace and its groups, after every check an upload gets (but the
/// per-tenant limits, which only the server knows).
fn read_file(path: &Path) -> anyhow::Result<(String, Vec<RuleGroup>)> {
    let mut text = String::new();
    std::fs::File::open(path)
        .context("opening the rule file")?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .context("reading the rule file (UTF-8 YAML)")?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!("larger than {} MiB", MAX_FILE_BYTES >> 20);
    }
    let file: NamespacedFile = serde_yaml::from_str(&text).context("invalid rule file YAML")?;
    let ns = match file.namespace {
        Some(ns) => ns,
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!("no namespace: the file has no `namespace:` and no usable name")
            })?,
    };
    if ns.is_empty() {
        bail!("the namespace must not be empty");
    }
    check_unique_names(file.groups.iter().map(|g| g.name.as_str())).map_err(|e| anyhow!(e))?;
    let mut problems = Vec::new();
    for g in &file.groups {
        // The server applies the tenant's rules-per-group limit; 0 here checks no count.
        problems.extend(check_group(g, 0));
        for (i, rule) in g.rules.iter().enumerate() {
            if rule.expr.trim().is_empty() {
                continue;
            }
            if let Err(e) = parse_promql(&rule.expr) {
                problems.push(format!(
                    "group {:?}, {}: could not parse expression: {e}",
                    g.name,
                    rule.describe(i)
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n  "));
    }
    Ok((ns, file.groups))
}

/// Parses PromQL as the server does: text bounds first, then the parser on a thread with the
/// engine's stack (deeply nested expressions recurse).
fn parse_promql(expr: &str) -> Result<(), String> {
    norn_promql::check_query_text(
        expr,
        norn_promql::DEFAULT_MAX_QUERY_BYTES,
        norn_promql::DEFAULT_MAX_QUERY_DEPTH,
    )
    .map_err(|e| e.to_string())?;
    let expr = expr.to_string();
    std::thread::Builder::new()
        .name("promql-lint".into())
        .stack_size(norn_promql::QUERY_THREAD_STACK_BYTES)
        .spawn(move || promql_parser::parser::parse(&expr).map(|_| ()))
        .map_err(|e| format!("starting the parser thread: {e}"))?
        .join()
        .map_err(|_| "the parser thread panicked".to_string())?
}

/// What `sync` does to make the server equal to the files.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    added: Vec<(String, RuleGroup)>,
    changed: Vec<(String, RuleGroup)>,
    deleted: Vec<(String, String)>,
}

impl Plan {
    fn new(wanted: &RuleSet, have: &RuleSet, only: &[String]) -> Plan {
        let in_scope = |ns: &str| only.is_empty() || only.iter().any(|o| o == ns);
        let mut plan = Plan::default();
        for (ns, groups) in wanted.iter().filter(|(ns, _)| in_scope(ns)) {
            for (name, g) in groups {
                match have.get(ns).and_then(|h| h.get(name)) {
                    None => plan.added.push((ns.clone(), g.clone())),
                    Some(current) if current != g => plan.changed.push((ns.clone(), g.clone())),
                    Some(_) => {}
                }
            }
        }
        for (ns, groups) in have.iter().filter(|(ns, _)| in_scope(ns)) {
            for name in groups.keys() {
                if !wanted.get(ns).is_some_and(|w| w.contains_key(name)) {
                    plan.deleted.push((ns.clone(), name.clone()));
                }
            }
        }
        plan
    }

    fn print(&self) {
        if self.added.is_empty() && self.changed.is_empty() && self.deleted.is_empty() {
            println!("no changes");
            return;
        }
        for (ns, g) in &self.added {
            println!("+ {ns}/{}", g.name);
        }
        for (ns, g) in &self.changed {
            println!("~ {ns}/{}", g.name);
        }
        for (ns, name) in &self.deleted {
            println!("- {ns}/{name}");
        }
        println!(
            "{} to add, {} to change, {} to delete",
            self.added.len(),
            self.changed.len(),
            self.deleted.len()
        );
    }
}

/// The config API of one tenant.
struct Api {
    agent: ureq::Agent,
    base: String,
    tenant: String,
    auth: Option<String>,
}

impl Api {
    fn new(args: &RulesArgs) -> anyhow::Result<Api> {
        let tenant = args
            .tenant
            .clone()
            .ok_or_else(|| anyhow!("--tenant is required (or NORN_TENANT_ID)"))?;
        TenantId::new(&tenant).map_err(|e| anyhow!("--tenant: {e}"))?;
        let address = args.address.trim_end_matches('/');
        if !address.starts_with("http://") {
            bail!(
                "--address must be an http:// URL (this tool speaks plain HTTP), got {address:?}"
            );
        }
        let auth = match (&args.user, &args.key) {
            (None, None) => None,
            (u, k) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    u.as_deref().unwrap_or(&tenant),
                    k.as_deref().unwrap_or("")
                ))
            )),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(args.timeout))
            .build()
            .into();
        Ok(Api {
            agent,
            base: format!("{address}/prometheus/config/v1/rules"),
            tenant,
            auth,
        })
    }

    /// One request below the rules path. `Ok(None)` for a 404; any other non-2xx is an
    /// error carrying the server's message.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let url = if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        };
        let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
            let r = r.header("X-Scope-OrgID", &self.tenant);
            match &self.auth {
                Some(a) => r.header("Authorization", a),
                None => r,
            }
        };
        let sent = match (method, body) {
            ("GET", _) => with(self.agent.get(&url)).call(),
            ("DELETE", _) => with(self.agent.delete(&url)).call(),
            ("POST", Some(b)) => {
                let r = self
                    .agent
                    .post(&url)
                    .header("X-Scope-OrgID", &self.tenant)
                    .header("Content-Type", "application/yaml");
                let r = match &self.auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                };
                r.send(b.as_bytes())
            }
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut resp = sent.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BYTES)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        match status {
            200..=299 => Ok(Some(text)),
            404 => Ok(None),
            _ => bail!("{method} {url}: HTTP {status}: {}", text.trim()),
        }
    }

    fn upload(&self, ns: &str, g: &RuleGroup) -> anyhow::Result<()> {
        self.call("POST", &enc(ns), Some(g.to_yaml()))
            .with_context(|| format!("uploading {ns}/{}", g.name))?
            .ok_or_else(|| {
                anyhow!(
                    "uploading {ns}/{}: HTTP 404 (no ruler at this address?)",
                    g.name
                )
            })?;
        Ok(())
    }

    /// The tenant's whole rule set (none: an empty set; the API answers 404 then).
    fn all(&self) -> anyhow::Result<RuleSet> {
        let Some(text) = self.call("GET", "", None)? else {
            return Ok(RuleSet::new());
        };
        let by_ns: BTreeMap<String, Vec<RuleGroup>> = serde_yaml::from_str(&text)
            .context("the server's rule list is not the expected YAML")?;
        Ok(by_ns
            .into_iter()
            .map(|(ns, gs)| (ns, gs.into_iter().map(|g| (g.name.clone(), g)).collect()))
            .collect())
    }
}

/// Percent-encodes one path segment (namespaces and group names may hold `/`, spaces, …).
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, expr: &str) -> RuleGroup {
        RuleGroup::from_yaml(&format!(
            "name: {name}\nrules:\n  - record: r\n    expr: {expr}\n"
        ))
        .unwrap()
    }

    fn set(entries: &[(&str, RuleGroup)]) -> RuleSet {
        let mut s = RuleSet::new();
        for (ns, g) in entries {
            s.entry(ns.to_string())
                .or_default()
                .insert(g.name.clone(), g.clone());
        }
        s
    }

    #[test]
    fn plan_adds_changes_and_deletes_within_scope() {
        let wanted = set(&[("a", group("g1", "up")), ("a", group("g2", "up * 2"))]);
        let have = set(&[
            ("a", group("g2", "up")),
            ("a", group("old", "up")),
            ("b", group("other", "up")),
        ]);
        let plan = Plan::new(&wanted, &have, &[]);
        assert_eq!(plan.added, vec![("a".to_string(), group("g1", "up"))]);
        assert_eq!(plan.changed, vec![("a".to_string(), group("g2", "up * 2"))]);
        assert_eq!(
            plan.deleted,
            vec![
                ("a".to_string(), "old".to_string()),
                ("b".to_string(), "other".to_string())
            ]
        );
        // Restricted to namespace a, b's group is left alone.
        let plan = Plan::new(&wanted, &have, &["a".to_string()]);
        assert_eq!(plan.deleted, vec![("a".to_string(), "old".to_string())]);
        // Equal sets: nothing to do.
        assert_eq!(Plan::new(&have, &have, &[]), Plan::default());
    }

    #[test]
    fn files_are_checked_whole_and_name_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("team.yaml");
        std::fs::write(
            &good,
            "groups:\n  - name: g\n    rules:\n      - record: x\n        expr: sum(up)\n",
        )
        .unwrap();
        let (ns, groups) = read_file(&good).unwrap();
        assert_eq!((ns.as_str(), groups.len()), ("team", 1));

        let named = dir.path().join("f.yml");
        std::fs::write(
            &named,
            "namespace: prod\ngroups:\n  - name: g\n    rules:\n      - record: x\n        expr: up\n",
        )
        .unwrap();
        assert_eq!(read_file(&named).unwrap().0, "prod");

        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "groups:\n  - name: g\n    interval: 5x\n    rules:\n      - record: x\n        expr: sum(\n",
        )
        .unwrap();
        let e = format!("{:#}", read_file(&bad).unwrap_err());
        assert!(e.contains("invalid interval"), "{e}");
        assert!(e.contains("could not parse expression"), "{e}");

        let dup = dir.path().join("dup.yaml");
        std::fs::write(
            &dup,
            "groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n",
        )
        .unwrap();
        assert!(format!("{:#}", read_file(&dup).unwrap_err()).contains("repeated group name"));
        // Two files with one namespace and one group name collide.
        let again = dir.path().join("again.yaml");
        std::fs::write(
            &again,
            "namespace: team\ngroups:\n  - name: g\n    rules:\n      - record: x\n        expr: up\n",
        )
        .unwrap();
        assert!(
            format!("{:#}", read_files(&[good, again]).unwrap_err())
                .contains("also in another file")
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(enc("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(enc("plain-name_1.x~"), "plain-name_1.x~");
    }
}
