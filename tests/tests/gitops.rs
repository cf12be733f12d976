//! GitOps health of the four kinds over status snapshots of real runs on the local cluster
//! (`tests/fixtures/status/`, written by `ocellus_tests::status::record` during `ocellus-demo`
//! and the operator's e2e test): Argo CD's health script (`charts/ocellus/gitops/argocd-health.lua`,
//! run by a real Lua 5.4 as Argo CD runs it, with the object as the global `obj`) and kstatus'
//! rules, which Flux applies, give the expected verdict for each, and agree with each other.

use std::path::PathBuf;

use mlua::LuaSerdeExt;
use ocellus_tests::repo_root;
use serde_json::{Value, json};

fn script() -> String {
    std::fs::read_to_string(repo_root().join("charts/ocellus/gitops/argocd-health.lua")).expect("the health script")
}

/// Runs the health script on `obj`: `(status, message)`.
fn argo(script: &str, obj: &Value) -> (String, String) {
    let lua = mlua::Lua::new();
    let value = lua
        .to_value_with(obj, mlua::SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false))
        .expect("to lua");
    lua.globals().set("obj", value).expect("obj");
    let hs: mlua::Table = lua.load(script).eval().expect("the script runs");
    (hs.get::<String>("status").expect("status"), hs.get::<String>("message").unwrap_or_default())
}

/// kstatus' generic rules (sigs.k8s.io/cli-utils/pkg/kstatus): a stale observedGeneration or
/// `Reconciling=True` is InProgress, `Stalled=True` is Failed, `Ready=False` is InProgress,
/// anything else Current.
fn kstatus(obj: &Value) -> &'static str {
    let st = &obj["status"];
    if st.is_null() {
        return "InProgress";
    }
    if let Some(g) = st["observedGeneration"].as_i64()
        && Some(g) != obj["metadata"]["generation"].as_i64()
    {
        return "InProgress";
    }
    let cond = |t: &str| {
        st["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == t)).map(|c| c["status"] == "True")
    };
    if cond("Reconciling") == Some(true) {
        "InProgress"
    } else if cond("Stalled") == Some(true) {
        "Failed"
    } else if cond("Ready") == Some(false) {
        "InProgress"
    } else {
        "Current"
    }
}

/// What a snapshot must be judged (docs/gitops.md's table): stale or reconciling is
/// Progressing whatever the phase; then Failed is Degraded, a phase held by the spec Suspended,
/// a done phase Healthy, the rest Progressing.
fn expected(obj: &Value) -> &'static str {
    if obj["status"].is_null() || obj["status"]["observedGeneration"] != obj["metadata"]["generation"] {
        return "Progressing";
    }
    let reconciling = obj["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Reconciling" && c["status"] == "True"));
    match obj["status"]["phase"].as_str().unwrap_or_default() {
        "Failed" => "Degraded",
        _ if reconciling => "Progressing",
        "Suspended" | "Stopped" | "Expired" => "Suspended",
        "Ready" | "Succeeded" | "ScaledToZero" => "Healthy",
        _ => "Progressing",
    }
}

fn fixtures() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("tests/fixtures/status");
    let mut all: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/status")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
            (p, v)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn argo_cd_and_kstatus_judge_every_snapshot_as_its_phase_says() {
    let script = script();
    let mut covered = std::collections::BTreeSet::new();
    for (path, obj) in fixtures() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let kind = name.split('-').next().unwrap_or_default().to_string();
        let want = expected(&obj);
        let (status, message) = argo(&script, &obj);
        assert_eq!(status, want, "{name}: Argo CD says {status} ({message})");
        assert!(!message.is_empty(), "{name}: no message");
        let k = kstatus(&obj);
        let agrees = match status.as_str() {
            "Healthy" | "Suspended" => k == "Current",
            "Degraded" => k == "Failed",
            _ => k == "InProgress",
        };
        assert!(agrees, "{name}: Argo CD {status}, kstatus {k}");
        covered.insert((kind, status));
    }
    for kind in ["dataset", "trainingjob", "export", "modeldeployment"] {
        for status in ["Healthy", "Progressing"] {
            assert!(
                covered.contains(&(kind.to_string(), status.to_string())),
                "no {kind} snapshot judged {status}: {covered:?}"
            );
        }
    }
    for status in ["Degraded", "Suspended"] {
        assert!(covered.iter().any(|(_, s)| s == status), "no snapshot judged {status}: {covered:?}");
    }
}

#[test]
fn objects_without_status_or_with_a_stale_one_are_progressing() {
    let script = script();
    let fresh = json!({"metadata": {"name": "x", "generation": 1}, "spec": {}});
    assert_eq!(argo(&script, &fresh).0, "Progressing");
    assert_eq!(kstatus(&fresh), "InProgress");
    let stale = json!({"metadata": {"name": "x", "generation": 3}, "status": {"observedGeneration": 2, "phase": "Ready",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ingested", "message": "40 images ingested"}]}});
    let (s, m) = argo(&script, &stale);
    assert_eq!((s.as_str(), m.contains("generation 3")), ("Progressing", true), "{m}");
    assert_eq!(kstatus(&stale), "InProgress");
}

#[test]
fn the_docs_install_the_script_for_each_kind() {
    let docs = std::fs::read_to_string(repo_root().join("docs/gitops.md")).expect("docs/gitops.md");
    let script = script();
    for kind in ["Dataset", "TrainingJob", "Export", "ModelDeployment"] {
        let key = format!("resource.customizations.health.ocellus.dev_{kind}: |");
        let at = docs.find(&key).unwrap_or_else(|| panic!("docs/gitops.md lacks {key}"));
        // The block under the key is the script, indented four spaces.
        let block: Vec<&str> =
            docs[at..].lines().skip(1).take_while(|l| l.starts_with("    ") || l.is_empty()).collect();
        let body: Vec<&str> = block.iter().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect();
        assert_eq!(
            body.join("\n").trim(),
            script.trim(),
            "the {kind} script in docs/gitops.md differs from the chart's"
        );
    }
}
