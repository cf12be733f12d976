//! The Helm chart, rendered and linted by the real `helm` binary.

use std::process::Command;

use ocellus_tests::manifests::{parse_stream, validate_object};
use ocellus_tests::{repo_root, require_tool};
use serde_json::Value;

fn chart_dir() -> String {
    repo_root().join("charts/ocellus").display().to_string()
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(require_tool("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("ocellus-helm-cache"))
        .output()
        .expect("run helm")
}

/// Value sets the chart must accept.
const VALUE_SETS: &[&[&str]] = &[
    &["--set", "s3.existingSecret=my-s3"],
    &[
        "--set",
        "s3.accessKeyId=AKIA",
        "--set",
        "s3.secretAccessKey=topsecret",
        "--set",
        "s3.endpoint=https://s3.example",
    ],
    &["--set", "minio.enabled=true", "--set", "minio.rootPassword=pw-123456"],
    &[
        "--set",
        "minio.enabled=true",
        "--set",
        "minio.rootPassword=pw-123456",
        "--set",
        "minio.persistence.enabled=false",
        "--set",
        "operator.watchNamespace=team-a",
        "--set",
        "gpu.runtimeClassName=nvidia",
    ],
];

fn render(values: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", "rel", chart.as_str(), "--namespace", "ocellus-system", "--include-crds"];
    args.extend_from_slice(values);
    let out = helm(&args);
    assert!(out.status.success(), "helm template {values:?}: {}", String::from_utf8_lossy(&out.stderr));
    parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("rendered YAML parses")
}

#[test]
fn helm_lint_passes() {
    let chart = chart_dir();
    for values in VALUE_SETS {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend_from_slice(values);
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint {values:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rendered_manifests_are_valid_kubernetes_objects() {
    for values in VALUE_SETS {
        let docs = render(values);
        assert!(docs.len() >= 14, "{values:?}: only {} objects", docs.len());
        for d in &docs {
            if let Err(e) = validate_object(d) {
                panic!("{values:?}: {e:#}");
            }
        }
    }
}

#[test]
fn chart_carries_the_generated_crds() {
    let docs = render(VALUE_SETS[0]);
    let mut names: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["datasets.ocellus.dev", "exports.ocellus.dev", "modeldeployments.ocellus.dev", "trainingjobs.ocellus.dev"]
    );
}

#[test]
fn minio_is_optional() {
    let kinds = |docs: &[Value]| {
        docs.iter().filter(|d| d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-minio"))).count()
    };
    assert_eq!(kinds(&render(VALUE_SETS[0])), 0);
    // PVC, Deployment, Service.
    assert_eq!(kinds(&render(VALUE_SETS[2])), 3);
    // The services point at the bundled MinIO.
    let docs = render(VALUE_SETS[2]);
    let op = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "rel-ocellus-operator")
        .expect("operator");
    let env = op["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    let endpoint = env.iter().find(|e| e["name"] == "OCELLUS_S3_ENDPOINT").expect("endpoint");
    assert_eq!(endpoint["value"], "http://rel-ocellus-minio.ocellus-system.svc:9000");
}

#[test]
fn missing_credentials_are_refused_with_a_clear_message() {
    let chart = chart_dir();
    let out = helm(&["template", "rel", chart.as_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3.accessKeyId (or s3.existingSecret, or minio.enabled) is required"), "{err}");
    let out = helm(&["template", "rel", chart.as_str(), "--set", "minio.enabled=true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("minio.rootPassword is required"));
}

#[test]
fn pods_run_with_least_privilege() {
    for values in VALUE_SETS {
        for d in render(values).iter().filter(|d| d["kind"] == "Deployment") {
            let name = d["metadata"]["name"].as_str().unwrap_or("?");
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            for c in pod["containers"].as_array().expect("containers") {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
                assert!(c["resources"]["requests"].is_object(), "{name}: resource requests");
                assert!(
                    c["readinessProbe"].is_object() && c["image"].as_str().is_some_and(|i| i.contains(':')),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn rbac_is_least_privilege() {
    let docs = render(VALUE_SETS[0]);
    let rules_of = |kind: &str, name: &str| -> Vec<Value> {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name}"))["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let all_rules: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    for r in &all_rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(!r[field].as_array().expect("list").iter().any(|x| x == "*"), "wildcard in {r}");
        }
    }
    let grants_secrets = |rules: &[Value]| {
        rules.iter().any(|r| r["resources"].as_array().is_some_and(|a| a.iter().any(|x| x == "secrets")))
    };
    // The operator never reads Secrets; the apiserver only in its own namespace (a Role, not a ClusterRole).
    assert!(!grants_secrets(&rules_of("ClusterRole", "rel-ocellus-operator")));
    assert!(!grants_secrets(&rules_of("ClusterRole", "rel-ocellus-apiserver")));
    assert!(grants_secrets(&rules_of("Role", "rel-ocellus-apiserver-keys")));
    // Nobody may escalate through RBAC objects.
    assert!(
        !all_rules
            .iter()
            .any(|r| r["apiGroups"].as_array().is_some_and(|a| a.iter().any(|g| g == "rbac.authorization.k8s.io")))
    );
}

#[test]
fn credentials_stay_in_the_secret() {
    let docs = render(VALUE_SETS[1]);
    for d in &docs {
        let text = d.to_string();
        let bootstrap_key = d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-bootstrap-api-key"));
        if d["kind"] == "Secret" && !bootstrap_key {
            assert!(text.contains("topsecret"));
        } else {
            assert!(!text.contains("topsecret"), "secret value leaked into {}/{}", d["kind"], d["metadata"]["name"]);
        }
    }
}

#[test]
fn the_bootstrap_api_key_is_passed_by_reference_and_can_be_turned_off() {
    let docs = render(VALUE_SETS[0]);
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "rel-ocellus-bootstrap-api-key")
        .expect("bootstrap key Secret");
    assert!(secret["data"]["api-key"].as_str().is_some_and(|k| !k.is_empty()));
    let api = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "rel-ocellus-apiserver")
        .expect("apiserver");
    let c = &api["spec"]["template"]["spec"]["containers"][0];
    let env = c["env"].as_array().expect("env");
    // By reference to the Secret, never a value in the Deployment.
    let key = env.iter().find(|e| e["name"] == "OCELLUS_BOOTSTRAP_API_KEY").expect("bootstrap key env");
    assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "rel-ocellus-bootstrap-api-key");
    assert!(key["value"].is_null());

    let mut off = VALUE_SETS[0].to_vec();
    off.extend(["--set", "apiKeys.bootstrap.enabled=false"]);
    let docs = render(&off);
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "rel-ocellus-bootstrap-api-key"));
    let api = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "rel-ocellus-apiserver" && d["kind"] == "Deployment")
        .expect("apiserver");
    let env = api["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env").clone();
    assert!(!env.iter().any(|e| e["name"] == "OCELLUS_BOOTSTRAP_API_KEY"));
}

/// Metric names the components register: string literals `ocellus_...` in their sources, and the
/// predictor's names under its registry prefix `ocellus_predictor_`.
fn exported_metrics() -> std::collections::BTreeSet<String> {
    let root = ocellus_tests::repo_root();
    let mut names = std::collections::BTreeSet::new();
    let mut files = vec![];
    for dir in ["operator/src", "apiserver/src", "common/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
    }
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(String::from).collect()
    };
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for w in text.split('"').skip(1).step_by(2) {
            if w.starts_with("ocellus_") && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(w.to_string());
            }
        }
    }
    let predictor = std::fs::read_to_string(root.join("predictor-image/src/metrics.rs")).expect("predictor metrics");
    for w in predictor.split("::new(").skip(1) {
        if let Some(name) = w
            .trim_start()
            .strip_prefix("Opts::new(")
            .or(Some(w.trim_start()))
            .and_then(|r| r.trim_start().strip_prefix('"'))
        {
            let name: String = name.chars().take_while(|c| *c != '"').collect();
            if words(&name).len() == 1 && !name.is_empty() {
                names.insert(format!("ocellus_predictor_{name}"));
            }
        }
    }
    names
}

#[test]
fn the_dashboard_queries_only_metrics_that_a_component_exports() {
    let exported = exported_metrics();
    assert!(exported.contains("ocellus_predictor_request_duration_seconds"), "{exported:?}");
    assert!(exported.contains("ocellus_operator_reconciles_total"), "{exported:?}");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(ocellus_tests::repo_root().join("charts/ocellus/dashboards/ocellus.json"))
            .expect("dashboard"),
    )
    .expect("json");
    let mut queried = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for w in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ocellus_"))
            {
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| w.strip_suffix(s)).unwrap_or(w);
                assert!(
                    exported.contains(w) || exported.contains(base),
                    "panel {:?} queries {w}, which no component exports",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "{queried} metric references");
}

#[test]
fn monitors_and_the_dashboard_render_when_enabled() {
    let objects = render(&[
        "--set",
        "s3.existingSecret=my-s3",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.dashboard.enabled=true",
    ]);
    let kinds: Vec<(String, String)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for name in ["rel-ocellus-operator", "rel-ocellus-apiserver", "rel-ocellus-predictors"] {
        assert!(kinds.contains(&("PodMonitor".to_string(), name.to_string())), "{name} missing: {kinds:?}");
    }
    let cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "rel-ocellus-dashboard")
        .expect("dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value =
        serde_json::from_str(cm["data"]["ocellus.json"].as_str().expect("json")).expect("the dashboard parses");
    assert_eq!(dash["uid"], "ocellus");
    // Off by default: no Prometheus Operator CRDs needed.
    let default = render(&["--set", "s3.existingSecret=my-s3"]);
    assert!(!default.iter().any(|o| o["kind"] == "PodMonitor" || o["metadata"]["name"] == "rel-ocellus-dashboard"));
}
