//! `helm install` of the chart on the local cluster: the operator and apiserver run as pods under
//! their own ServiceAccounts, pass their readiness probes, and get only the access they need.

use std::process::{Command, Output};

use ocellus_tests::cluster::{ClusterOptions, LocalCluster};
use ocellus_tests::node::{ImageMap, ImageMapping};
use ocellus_tests::{repo_root, require_tool, workspace_binary};

fn run(tool: &str, c: &LocalCluster, args: &[&str]) -> Output {
    let kc = c.kubeconfig().display().to_string();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    Command::new(require_tool(tool)).args(&all).output().expect("run tool")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn helm_install_runs_operator_and_apiserver_with_least_privilege() {
    let images = ImageMap {
        images: vec![
            ImageMapping {
                image: "ghcr.io/ocellus-dev/ocellus-operator".into(),
                binary: Some(workspace_binary("ocellus-operator")),
                env: Default::default(),
            },
            ImageMapping {
                image: "ghcr.io/ocellus-dev/ocellus-apiserver".into(),
                binary: Some(workspace_binary("ocellus-apiserver")),
                env: Default::default(),
            },
        ],
    };
    let c = LocalCluster::start(ClusterOptions { gpus: Some(0), images, ..Default::default() }).expect("cluster");
    let root = repo_root();
    // Helm 4 installs CRDs with server-side apply, which 1.20 refuses for the unknown
    // x-kubernetes-validations field; on this old server the CRDs go first through kubectl.
    ok(run("kubectl", &c, &["apply", "--validate=false", "-f", &root.join("crds/yaml").display().to_string()]));
    let installed = ok(run(
        "helm",
        &c,
        &[
            "install",
            "ocellus",
            &root.join("charts/ocellus").display().to_string(),
            "--skip-crds",
            "-n",
            "ocellus-system",
            "--create-namespace",
            "--set",
            "s3.accessKeyId=test",
            "--set",
            "s3.secretAccessKey=test-secret-value",
            "--set",
            "s3.endpoint=http://127.0.0.1:9",
            // Unlimited, so that the fuzzing below reaches the handlers rather than the limiter.
            "--set-string",
            "apiserver.rateLimits=default=unlimited\\,training=unlimited\\,upload=unlimited\\,export=unlimited\\,download=unlimited\\,predict=unlimited",
            "--wait",
            "--timeout",
            "90s",
        ],
    ));
    let ready = ok(run(
        "kubectl",
        &c,
        &[
            "get",
            "deploy",
            "-n",
            "ocellus-system",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.readyReplicas} {end}",
        ],
    ));
    assert_eq!(ready.trim(), "ocellus-apiserver=1 ocellus-operator=1");
    // The operator acted with its own ServiceAccount: it could list CRDs, so it became ready.
    let logs = ok(run("kubectl", &c, &["logs", "-n", "ocellus-system", "deploy/ocellus-operator"]));
    assert!(logs.contains("operator ready"), "{logs}");
    assert!(!logs.contains("test-secret-value"), "a secret reached the logs");

    let can = |sa: &str, verb: &str, what: &str, ns: &str| -> bool {
        let o = run(
            "kubectl",
            &c,
            &[
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                ns,
                &format!("--as=system:serviceaccount:ocellus-system:ocellus-{sa}"),
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim() == "yes"
    };
    assert!(can("operator", "create", "jobs", "team-a"));
    // `<resource>/<x>` is a resource name to kubectl: ask for the subresource explicitly.
    let status = run(
        "kubectl",
        &c,
        &[
            "auth",
            "can-i",
            "patch",
            "trainingjobs.ocellus.dev",
            "--subresource=status",
            "-n",
            "team-a",
            "--as=system:serviceaccount:ocellus-system:ocellus-operator",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "yes", "the operator writes status");
    assert!(!can("operator", "patch", "trainingjobs.ocellus.dev", "team-a"), "the operator never writes specs");
    assert!(!can("operator", "get", "secrets", "ocellus-system"));
    assert!(!can("operator", "create", "pods", "team-a"));
    assert!(can("operator", "patch", "deployments.apps", "team-a"), "the operator sizes predictor Deployments");
    assert!(!can("operator", "patch", "modeldeployments.ocellus.dev", "team-a"), "the operator never writes specs");
    assert!(can("apiserver", "watch", "endpointslices.discovery.k8s.io", "team-a"));
    assert!(can("apiserver", "create", "trainingjobs.ocellus.dev", "team-a"));
    assert!(can("apiserver", "get", "secrets", "ocellus-system"));
    assert!(!can("apiserver", "get", "secrets", "team-a"));
    assert!(!can("apiserver", "create", "jobs", "team-a"));
    assert!(can("apiserver", "create", "configmaps", "team-a"), "Ultralytics projects and models are records");
    assert!(!can("apiserver", "update", "configmaps", "team-a"), "records are never changed");

    // The bootstrap admin API key: the one the install notes print, kept in its Secret; the
    // apiserver stores only its hash, accepts it, and never logs it.
    let key_b64 = ok(run(
        "kubectl",
        &c,
        &["get", "secret", "ocellus-bootstrap-api-key", "-n", "ocellus-system", "-o", "jsonpath={.data.api-key}"],
    ));
    let b64 = |s: &str| {
        use base64::Engine;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s.trim()).expect("base64")).expect("utf-8")
    };
    let key = b64(&key_b64);
    assert!(
        key.len() == 43
            && key.starts_with("ul_")
            && key[3..].chars().all(|ch| ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase()),
        "not a ul_ + 40 hex key: {key:?}"
    );
    assert!(installed.contains(&key), "the install notes do not print the bootstrap key");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let records = loop {
        let out = ok(run(
            "kubectl",
            &c,
            &["get", "secrets", "-n", "ocellus-system", "-l", "ocellus.dev/api-key=true", "-o", "json"],
        ));
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() || std::time::Instant::now() > deadline {
            break items;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(records.len(), 1, "one key record: {records:?}");
    let stored = records[0]["data"]["sha256"].as_str().expect("sha256");
    assert_eq!(b64(stored), hash, "the record holds the key's SHA-256");
    assert!(!serde_json::to_string(&records).expect("json").contains(&key[3..]), "a key record holds the key");
    let ip = ok(run(
        "kubectl",
        &c,
        &[
            "get",
            "pods",
            "-n",
            "ocellus-system",
            "-l",
            "app.kubernetes.io/component=apiserver",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ],
    ));
    let http = reqwest::blocking::Client::new();
    let url = format!("http://{}:8000/api/api-keys", ip.trim());
    let listed = http.get(&url).bearer_auth(&key).send().expect("list keys");
    assert_eq!(listed.status(), 200);
    let body = listed.text().expect("body");
    assert!(body.contains(&key[..11]) && !body.contains(&key[11..]), "the list shows the prefix only: {body}");
    assert_eq!(http.get(&url).send().expect("list keys").status(), 401, "no key, no list");
    schemathesis(&format!("http://{}:8000", ip.trim()), &key);
    let logs = ok(run("kubectl", &c, &["logs", "-n", "ocellus-system", "deploy/ocellus-apiserver"]));
    assert!(!logs.contains(&key[3..]), "the bootstrap key reached the apiserver's logs");

    // An upgrade to changed values rolls the pods, keeps the bootstrap key, and is ready again.
    let chart = root.join("charts/ocellus").display().to_string();
    ok(run(
        "helm",
        &c,
        &[
            "upgrade",
            "ocellus",
            &chart,
            "--skip-crds",
            "-n",
            "ocellus-system",
            "--reuse-values",
            "--set",
            "apiserver.logLevel=debug",
            "--set",
            "operator.logLevel=debug",
            "--wait",
            "--timeout",
            "90s",
        ],
    ));
    let env = ok(run(
        "kubectl",
        &c,
        &[
            "get",
            "deploy",
            "ocellus-apiserver",
            "-n",
            "ocellus-system",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='OCELLUS_LOG')].value}",
        ],
    ));
    assert_eq!(env.trim(), "debug", "the upgrade's values reached the pods");
    let kept = ok(run(
        "kubectl",
        &c,
        &["get", "secret", "ocellus-bootstrap-api-key", "-n", "ocellus-system", "-o", "jsonpath={.data.api-key}"],
    ));
    assert_eq!(b64(kept.trim()), key, "an upgrade replaced the bootstrap key");

    // Uninstall leaves nothing of the release behind (the CRDs, installed apart, stay).
    ok(run("helm", &c, &["uninstall", "ocellus", "-n", "ocellus-system", "--wait", "--timeout", "60s"]));
    // `--wait` waits for the release's objects; their pods go after, by garbage collection and
    // their grace period.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let left = loop {
        let left = ok(run("kubectl", &c, &["get", "pods", "-n", "ocellus-system", "-o", "name"]));
        if left.trim().is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(left.trim(), "", "pods left a minute after uninstall");
    let selector = "app.kubernetes.io/instance=ocellus";
    for kind in [
        "deployments,services,secrets,configmaps,serviceaccounts,roles,rolebindings",
        "clusterroles,clusterrolebindings",
    ] {
        let orphans = ok(run("kubectl", &c, &["get", kind, "-A", "-l", selector, "-o", "name"]));
        assert_eq!(orphans.trim(), "", "left after uninstall: {orphans}");
    }
    // What stays, on purpose: the hashed API key records (a reinstall keeps its keys).
    let secrets =
        ok(run("kubectl", &c, &["get", "secrets", "-n", "ocellus-system", "-l", "!ocellus.dev/api-key", "-o", "name"]));
    assert!(secrets.lines().all(|s| s.starts_with("secret/default-token-")), "left after uninstall: {secrets}");
    let crds = ok(run("kubectl", &c, &["get", "crd", "-o", "name"]));
    assert!(crds.contains("datasets.ocellus.dev"), "uninstall removed the CRDs: {crds}");
}

/// schemathesis (PyPI) against the apiserver's `/openapi.json` with an admin key: every operation
/// of every surface (and methods the document does not list) with generated and edge-case input;
/// no 5xx but the documented 501s (tests/schemathesis/ocellus_checks.py), and every response
/// as the document declares it.
fn schemathesis(base: &str, key: &str) {
    let out = Command::new(require_tool("ocellus-python"))
        .args(["-m", "schemathesis.cli", "run", &format!("{base}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "no_undocumented_server_error,response_schema_conformance"])
        .args(["--max-examples", "20", "--workers", "2", "--seed", "1"])
        .env("SCHEMATHESIS_HOOKS", "ocellus_checks")
        .env("PYTHONPATH", repo_root().join("tests/schemathesis"))
        .env("HOME", std::env::temp_dir())
        // It keeps a cache of what it found in its working directory.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("generated") || l.contains("Tested:")).collect();
    eprintln!("[ocellus] schemathesis: {}", summary.join("; ").trim());
}
