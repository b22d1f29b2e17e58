//! `norn tools rules` against a real `norn --target=all`: lint without a server, load, list,
//! get, diff, sync (adds, changes and deletes; `--namespaces` keeps other namespaces; a dry
//! run changes nothing), delete, a bad file that changes nothing on the server, and tenants
//! that never see each other's groups.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Norn, Run, run_bounded};

const TEAM: &str = "groups:
  - name: g1
    interval: 1m
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
  - name: g2
    rules:
      - alert: Down
        expr: up == 0
        for: 5m
        annotations:
          summary: '{{ $labels.job }} is down'
";

const OPS: &str = "namespace: ops
groups:
  - name: o1
    rules:
      - record: up:count
        expr: count(up)
";

fn tool(n: &Norn, tenant: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_norn"));
    cmd.args([
        "tools",
        "rules",
        "--address",
        &n.url(""),
        "--tenant",
        tenant,
    ])
    .args(args);
    run_bounded(&mut cmd, Duration::from_secs(60))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn rules_tool_manages_a_tenants_groups_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let team = write(&files, "team.yaml", TEAM);
    let ops = write(&files, "whatever.yml", OPS);
    let bad = write(
        &files,
        "bad.yaml",
        "groups:\n  - name: g1\n    rules:\n      - record: job:up:sum\n        expr: sum(up\n",
    );

    // lint needs no server.
    let mut lint = Command::new(env!("CARGO_BIN_EXE_norn"));
    lint.args(["tools", "rules", "lint", &team, &ops]);
    let r = run_bounded(&mut lint, Duration::from_secs(60));
    assert!(r.ok(), "{}", r.text());
    assert!(r.text().contains("namespace \"ops\""), "{}", r.text());
    let mut lint = Command::new(env!("CARGO_BIN_EXE_norn"));
    lint.args(["tools", "rules", "lint", &team, &bad]);
    let r = run_bounded(&mut lint, Duration::from_secs(60));
    assert!(!r.ok(), "a bad file must fail lint: {}", r.text());
    assert!(
        r.text().contains("could not parse expression"),
        "{}",
        r.text()
    );

    let mut n = Norn::start(
        &dir.path().join("norn"),
        &["--ruler.evaluation-interval=1s", "--ruler.poll-interval=1s"],
    );

    let r = tool(&n, "a", &["load", &team, &ops]);
    assert!(r.ok(), "{}", r.text());
    assert!(r.text().contains("3 group(s) loaded"), "{}", r.text());

    let r = tool(&n, "a", &["list"]);
    assert!(r.ok(), "{}", r.text());
    for want in [
        "team\tg1\t1 rule(s)",
        "team\tg2\t1 rule(s)",
        "ops\to1\t1 rule(s)",
    ] {
        assert!(r.text().contains(want), "missing {want:?} in {}", r.text());
    }
    let r = tool(&n, "a", &["get", "team", "g2"]);
    assert!(r.ok(), "{}", r.text());
    assert!(
        r.text().contains("alert: Down") && r.text().contains("$labels.job"),
        "{}",
        r.text()
    );

    // Another tenant sees nothing of a's.
    let r = tool(&n, "b", &["list"]);
    assert!(
        r.ok() && r.text().contains("no rule groups"),
        "{}",
        r.text()
    );
    assert!(!tool(&n, "b", &["get", "team", "g2"]).ok());

    // A bad file: nothing is sent.
    let r = tool(&n, "a", &["load", &bad]);
    assert!(!r.ok(), "{}", r.text());
    let r = tool(&n, "a", &["get", "team", "g1"]);
    assert!(r.text().contains("sum by (job) (up)"), "{}", r.text());

    // Nothing differs from the files just loaded.
    let r = tool(&n, "a", &["diff", &team, &ops]);
    assert!(r.ok() && r.text().contains("no changes"), "{}", r.text());

    // The team file now changes g1, drops g2 and adds g3.
    let team2 = write(
        &files,
        "team.yaml",
        "groups:
  - name: g1
    rules:
      - record: job:up:sum
        expr: sum by (job, instance) (up)
  - name: g3
    rules:
      - record: job:up:max
        expr: max by (job) (up)
",
    );
    let r = tool(&n, "a", &["diff", &team2]);
    assert!(r.ok(), "{}", r.text());
    for want in ["+ team/g3", "~ team/g1", "- team/g2", "- ops/o1"] {
        assert!(r.text().contains(want), "missing {want:?} in {}", r.text());
    }
    // A dry run changes nothing.
    let r = tool(&n, "a", &["sync", "--dry-run", &team2]);
    assert!(r.ok(), "{}", r.text());
    assert!(tool(&n, "a", &["get", "team", "g2"]).ok());
    // Restricted to the team namespace, ops stays.
    let r = tool(&n, "a", &["sync", "--namespaces", "team", &team2]);
    assert!(r.ok() && r.text().contains("synced"), "{}", r.text());
    let r = tool(&n, "a", &["list"]);
    let listed = r.text();
    assert!(
        listed.contains("team\tg1") && listed.contains("team\tg3"),
        "{listed}"
    );
    assert!(!listed.contains("team\tg2"), "{listed}");
    assert!(listed.contains("ops\to1"), "{listed}");
    let r = tool(&n, "a", &["get", "team", "g1"]);
    assert!(
        r.text().contains("sum by (job, instance) (up)"),
        "{}",
        r.text()
    );
    let r = tool(&n, "a", &["diff", "--namespaces", "team", &team2]);
    assert!(r.text().contains("no changes"), "{}", r.text());

    // Delete a group, then a namespace; deleting what is gone fails.
    assert!(tool(&n, "a", &["delete", "team", "g3"]).ok());
    assert!(!tool(&n, "a", &["get", "team", "g3"]).ok());
    assert!(tool(&n, "a", &["delete", "ops"]).ok());
    let r = tool(&n, "a", &["list"]);
    assert!(!r.text().contains("ops"), "{}", r.text());
    assert!(!tool(&n, "a", &["delete", "ops"]).ok());

    // No tenant, or a server that is not there: one error line, exit 1.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_norn"));
    cmd.env_remove("NORN_TENANT_ID")
        .args(["tools", "rules", "--address", &n.url(""), "list"]);
    let r = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        !r.ok() && r.text().contains("--tenant is required"),
        "{}",
        r.text()
    );
    n.stop();
    let r = tool(&n, "a", &["list"]);
    assert!(!r.ok() && r.text().contains("error:"), "{}", r.text());
}
