//! The Kubernetes manifests (`deploy/kubernetes/`) against the Kubernetes API schemas and the
//! real `norn` binary:
//!
//! * every file of the kustomize base, and the example overlay rendered by [`render`] (a
//!   renderer of exactly the kustomize fields the overlay uses: `resources`, `namespace`,
//!   `images`, `replicas`; any other field fails the test), validate with
//!   `kubernetes-validate --strict` (PyPI; its schemas are bundled, no cluster needed);
//! * every container's command line, with the ConfigMap's files and the Secret's variables in
//!   place, passes `norn tools check-config`, which parses and validates it exactly as the
//!   server does before it serves.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every document of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomization(dir: &Path) -> Mapping {
    let k = documents(&dir.join("kustomization.yaml"));
    assert_eq!(k.len(), 1, "{}", dir.display());
    k[0].as_mapping()
        .expect("kustomization is a mapping")
        .clone()
}

/// Renders a kustomization directory: its resources (files, or directories rendered in turn),
/// then its namespace, images and replicas. Fails on any kustomize field it does not implement.
fn render(dir: &Path) -> Vec<Value> {
    let k = kustomization(dir);
    for key in k.keys() {
        let key = key.as_str().unwrap_or_default();
        assert!(
            [
                "apiVersion",
                "kind",
                "resources",
                "namespace",
                "images",
                "replicas"
            ]
            .contains(&key),
            "{}: kustomize field {key} is not rendered by this test; keep the overlays simple or teach render() it",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for r in k["resources"].as_sequence().expect("resources") {
        let p = dir.join(r.as_str().expect("resource path"));
        if p.is_dir() {
            out.extend(render(&p));
        } else {
            out.extend(documents(&p));
        }
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for d in &mut out {
            if d["kind"] != "Namespace" {
                d["metadata"]["namespace"] = Value::from(ns);
            }
        }
    }
    for img in k
        .get("images")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = img["name"].as_str().expect("images[].name");
        for d in &mut out {
            let Some(spec) = d
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
            else {
                continue;
            };
            for c in spec
                .get_mut("containers")
                .and_then(Value::as_sequence_mut)
                .into_iter()
                .flatten()
            {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                let (base, tag) = image.split_once(':').unwrap_or((image.as_str(), "latest"));
                if base == name {
                    let new_name = img["newName"].as_str().unwrap_or(base);
                    let new_tag = img["newTag"].as_str().unwrap_or(tag);
                    c["image"] = Value::from(format!("{new_name}:{new_tag}"));
                }
            }
        }
    }
    for rep in k
        .get("replicas")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = rep["name"].as_str().expect("replicas[].name");
        let count = rep["count"].as_u64().expect("replicas[].count");
        let mut found = false;
        for d in &mut out {
            if d["metadata"]["name"] == name && d["spec"].get("replicas").is_some() {
                d["spec"]["replicas"] = Value::from(count);
                found = true;
            }
        }
        assert!(found, "replicas: no workload named {name}");
    }
    out
}

/// `python3 -m kubernetes_validate --strict` on files; `None` (after printing SKIP) when it is
/// not installed, unless NORN_REQUIRE_PEERS=1.
fn kubernetes_validate(files: &[PathBuf]) -> Option<common::Run> {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            !common::require_peers(),
            "kubernetes-validate is not installed but NORN_REQUIRE_PEERS=1 (pip install kubernetes-validate)"
        );
        eprintln!("SKIP: python3 -m kubernetes_validate not available");
        return None;
    }
    Some(common::run_bounded(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(files),
        Duration::from_secs(120),
    ))
}

fn base_files() -> Vec<PathBuf> {
    let base = k8s_dir().join("base");
    let k = kustomization(&base);
    let listed: Vec<PathBuf> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| base.join(r.as_str().unwrap()))
        .collect();
    // Every manifest in the directory is in the kustomization, and the reverse.
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "base/kustomization.yaml resources vs files"
    );
    listed
}

#[test]
fn base_manifests_validate() {
    let files = base_files();
    let Some(run) = kubernetes_validate(&files) else {
        return;
    };
    assert!(run.ok(), "{}", run.text());
    // What the issue asks of the base, read from the manifests themselves.
    let docs: Vec<Value> = files.iter().flat_map(|f| documents(f)).collect();
    let kind_of = |name: &str| {
        docs.iter()
            .find(|d| {
                d["metadata"]["name"] == name
                    && d["kind"] != "Service"
                    && d["kind"] != "PodDisruptionBudget"
            })
            .map(|d| d["kind"].as_str().unwrap().to_string())
    };
    for c in ["ingester", "store-gateway", "compactor"] {
        assert_eq!(
            kind_of(&format!("norn-{c}")).as_deref(),
            Some("StatefulSet"),
            "{c}"
        );
        let s = docs
            .iter()
            .find(|d| {
                d["kind"] == "StatefulSet" && d["metadata"]["name"] == format!("norn-{c}").as_str()
            })
            .unwrap();
        assert_eq!(s["spec"]["podManagementPolicy"], "Parallel", "{c}");
        assert!(
            s["spec"]["volumeClaimTemplates"]
                .as_sequence()
                .is_some_and(|v| !v.is_empty()),
            "{c}"
        );
    }
    for c in ["distributor", "querier", "query-frontend", "ruler"] {
        assert_eq!(
            kind_of(&format!("norn-{c}")).as_deref(),
            Some("Deployment"),
            "{c}"
        );
    }
    for c in [
        "distributor",
        "ingester",
        "querier",
        "query-frontend",
        "ruler",
        "store-gateway",
        "compactor",
    ] {
        let name = format!("norn-{c}");
        for kind in ["Service", "PodDisruptionBudget"] {
            assert!(
                docs.iter()
                    .any(|d| d["kind"] == kind && d["metadata"]["name"] == name.as_str()),
                "{kind} {name}"
            );
        }
    }
    let gossip = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "norn-gossip-ring")
        .expect("gossip Service");
    assert_eq!(gossip["spec"]["clusterIP"], "None");
    for w in docs
        .iter()
        .filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
    {
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"],
                "/ready",
                "{}",
                w["metadata"]["name"].as_str().unwrap()
            );
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{}",
                w["metadata"]["name"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn overlay_renders_and_validates() {
    let docs = render(&k8s_dir().join("overlays/example"));
    let ns = kustomization(&k8s_dir().join("overlays/example"))["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    // The transformations took effect.
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some(ns.as_str()),
                "{:?}",
                d["metadata"]
            );
        }
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            assert!(
                c["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("registry.example.com/norn:"),
                "{:?}",
                c["image"]
            );
        }
    }
    let dist = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "norn-distributor")
        .unwrap();
    assert_eq!(dist["spec"]["replicas"], 3);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rendered.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(&out, text.join("---\n")).unwrap();
    let Some(run) = kubernetes_validate(&[out]) else {
        return;
    };
    assert!(run.ok(), "{}", run.text());
    assert_eq!(
        run.stdout.matches("passed for resource").count()
            + run.stderr.matches("passed for resource").count(),
        docs.len(),
        "{}",
        run.text()
    );
}

/// Runs `norn tools check-config` with a container's args and environment, the ConfigMap's
/// files written to `etc` (standing in for its mount at /etc/norn).
fn check_config(args: &[String], env: &[(String, String)], etc: &Path) -> common::Run {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("/etc/norn/", &format!("{}/", etc.display())))
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_norn"));
    cmd.arg("tools").arg("check-config").arg("--").args(&args);
    // Only the container's variables: none inherited from the test's environment.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NORN_") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run_bounded(&mut cmd, Duration::from_secs(30))
}

#[test]
fn every_container_command_line_passes_check_config() {
    let docs: Vec<Value> = base_files().iter().flat_map(|f| documents(f)).collect();
    let etc = tempfile::tempdir().unwrap();
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "norn-config")
        .expect("ConfigMap norn-config");
    for (file, text) in cm["data"].as_mapping().unwrap() {
        std::fs::write(
            etc.path().join(file.as_str().unwrap()),
            text.as_str().unwrap(),
        )
        .unwrap();
    }
    let mut checked = 0;
    for w in docs
        .iter()
        .filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
    {
        let pod = &w["spec"]["template"]["spec"];
        for c in pod["containers"].as_sequence().unwrap() {
            let args: Vec<String> = c["args"]
                .as_sequence()
                .expect("args")
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            // Secret values are placeholders: what matters is that the variables are read.
            let env: Vec<(String, String)> = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|e| {
                    let v = e["value"].as_str().unwrap_or("from-a-secret").to_string();
                    (e["name"].as_str().unwrap().to_string(), v)
                })
                .collect();
            assert!(env.iter().all(|(k, _)| k.starts_with("NORN_")), "{env:?}");
            let run = check_config(&args, &env, etc.path());
            assert!(
                run.ok() && run.stdout.contains("configuration OK"),
                "{} {:?}: {}",
                w["metadata"]["name"].as_str().unwrap(),
                args,
                run.text()
            );
            let target = args
                .iter()
                .find_map(|a| a.strip_prefix("--target="))
                .expect("--target");
            assert!(run.stdout.contains(target), "{}", run.text());
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "one container per component");
    // The check is not a rubber stamp: an unknown flag and an unknown YAML key fail it.
    let run = check_config(
        &[
            "--target=ingester".into(),
            "--ingester.no-such-flag=1".into(),
        ],
        &[],
        etc.path(),
    );
    assert!(!run.ok(), "{}", run.text());
    std::fs::write(
        etc.path().join("bad.yaml"),
        "server:\n  http_listen_prot: 1\n",
    )
    .unwrap();
    let run = check_config(
        &["--config.file=/etc/norn/bad.yaml".into()],
        &[],
        etc.path(),
    );
    assert!(
        !run.ok() && run.text().contains("http_listen_prot"),
        "{}",
        run.text()
    );
}
