//! The generated CRDs on a real API server, driven by the real kubectl.

use ocellus_tests::cluster::{ClusterOptions, LocalCluster, stdout_ok};
use ocellus_tests::repo_root;

#[test]
fn crds_install_explain_and_accept_the_examples() {
    let c = LocalCluster::start(ClusterOptions { gpus: Some(0), ..Default::default() }).expect("cluster");
    let root = repo_root();
    // kubectl 1.33 validates client-side against the 1.20 server's schema, which predates
    // x-kubernetes-validations; the server itself drops the unknown field.
    stdout_ok(&c.kubectl(&["apply", "--validate=false", "-f", &root.join("crds/yaml").display().to_string()]));
    stdout_ok(&c.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"]));

    for (kind, field) in [
        ("dataset", "spec.source.s3"),
        ("trainingjob", "spec.hyperparameters.imgsz"),
        ("export", "spec.format"),
        ("modeldeployment", "spec.scaling.minReplicas"),
    ] {
        // Discovery of new CRDs in kubectl's cache can lag; retry briefly.
        let mut out = c.kubectl(&["explain", &format!("{kind}.{field}")]);
        for _ in 0..50 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            out = c.kubectl(&["explain", &format!("{kind}.{field}")]);
        }
        let text = stdout_ok(&out);
        assert!(text.contains("DESCRIPTION"), "{kind}.{field}: {text}");
        assert!(!text.contains("<empty>"), "{kind}.{field} is undocumented: {text}");
    }

    stdout_ok(&c.kubectl(&["create", "namespace", "demo"]));
    stdout_ok(&c.kubectl(&[
        "apply",
        "-n",
        "demo",
        "--validate=false",
        "-f",
        &root.join("examples").display().to_string(),
    ]));
    let listed = stdout_ok(&c.kubectl(&["get", "ocellus", "-n", "demo", "-o", "name"]));
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dataset.ocellus.dev/shapes",
            "export.ocellus.dev/shapes-yolov8n-onnx",
            "modeldeployment.ocellus.dev/shapes",
            "trainingjob.ocellus.dev/shapes-yolov8n"
        ]
    );
    // Short names work.
    stdout_ok(&c.kubectl(&["get", "ds,tj,ex,mdep", "-n", "demo"]));
    // Defaults from the schema are applied by the server.
    let imgsz =
        stdout_ok(&c.kubectl(&["get", "mdep", "shapes", "-n", "demo", "-o", "jsonpath={.spec.inference.maxDet}"]));
    assert_eq!(imgsz, "300");

    // The schema's enum refuses other Ultralytics export formats, naming the supported ones.
    let bad = root.join("target/bad-export.yaml");
    std::fs::write(&bad, "apiVersion: ocellus.dev/v1alpha1\nkind: Export\nmetadata: {name: bad}\nspec:\n  source: {trainingJob: {name: t}}\n  format: coreml\n").expect("write");
    let out = c.kubectl(&["apply", "-n", "demo", "--validate=false", "-f", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.format") && err.contains("\"torchscript\", \"onnx\", \"engine\""), "{err}");
}
