//! docs/configuration.md against the code: every flag, its environment variable and every
//! YAML key the code accepts must be in the reference.

use super::*;
use clap::CommandFactory;

fn yaml_paths(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, v) in m {
            let k = k.as_str().unwrap_or_default();
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                serde_yaml::Value::Mapping(_) => yaml_paths(v, &path, out),
                _ => out.push(path),
            }
        }
    }
}

/// docs/configuration.md must name every flag (in a row that also names its environment
/// variable) and every YAML key the code accepts.
#[test]
fn configuration_reference_lists_every_option() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .expect("docs/configuration.md exists");
    let mut missing = Vec::new();
    for arg in Args::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let flag = format!("`--{long}`");
        if !doc.contains(&flag) {
            missing.push(format!("--{long}"));
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        if !doc
            .lines()
            .any(|l| l.contains(&flag) && !env.is_empty() && l.contains(&env))
        {
            missing.push(format!("the environment variable of --{long} (its row)"));
        }
    }
    let mut paths = Vec::new();
    yaml_paths(
        &serde_yaml::to_value(Config::default()).unwrap(),
        "",
        &mut paths,
    );
    // Optional keys that default to null still belong in the reference.
    paths.push("runtime_config.file".into());
    for p in paths {
        if !doc.contains(&format!("`{p}`")) {
            missing.push(p);
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention: {missing:?}"
    );
}

/// Every flag of the server (and so of the tools, which flatten the same blocks) is read from
/// `NORN_` + its name upper-cased with `.` and `-` as `_`.
#[test]
fn every_flag_has_its_environment_variable() {
    let mut wrong = Vec::new();
    for arg in Args::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let want = super::flags::env_name(long);
        let got = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        if got.as_deref() != Some(want.as_str()) {
            wrong.push(format!("--{long}: {got:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Args::command().debug_assert();
}
