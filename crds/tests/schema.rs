//! Properties of the generated CRDs: generated YAML is committed, every field is documented,
//! every CEL rule compiles and accepts/rejects what it should, and the examples are valid.

use kube::CustomResourceExt;
use kube_cel::Validator;
use ocellus_crds::*;
use serde_json::{Value, json};

fn schema<K: CustomResourceExt>() -> Value {
    let crd = serde_json::to_value(K::crd()).expect("crd to json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Validates `obj` against the CEL rules of `K`'s schema; returns the failure messages.
fn cel_errors<K: CustomResourceExt>(obj: Value) -> Vec<String> {
    match Validator::new().validate(&schema::<K>(), &obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message.to_string()).collect(),
    }
}

fn repo_file(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn committed_yaml_matches_generated() {
    for (file, crd) in all_crds() {
        let want = render_yaml(&crd).expect("render");
        for dir in OUTPUT_DIRS {
            let have = repo_file(&format!("{dir}/{file}"));
            assert!(
                have == want,
                "{dir}/{file} differs from the generated CRD; run `cargo run -p ocellus-crds --bin crdgen`"
            );
        }
    }
}

fn undocumented(path: &str, node: &Value, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = format!("{path}.{name}");
            let doc = sub.get("description").and_then(Value::as_str).unwrap_or("");
            // metadata is documented by Kubernetes itself.
            if doc.trim().is_empty() && p != ".metadata" {
                out.push(p.clone());
            }
            undocumented(&p, sub, out);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        undocumented(&format!("{path}{{}}"), ap, out);
    }
}

#[test]
fn every_property_has_a_description() {
    for (file, crd) in all_crds() {
        let v = serde_json::to_value(&crd).expect("json");
        let root = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = vec![];
        undocumented("", root, &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: fields without a description (kubectl explain would be empty): {missing:?}"
        );
        // Sanity: the walk really visits fields.
        assert!(root["properties"]["spec"]["properties"].as_object().map(|m| m.len()).unwrap_or(0) >= 3, "{file}");
    }
}

#[test]
fn every_cel_rule_compiles() {
    for (file, crd) in all_crds() {
        let v = serde_json::to_value(&crd).expect("json");
        let compiled = kube_cel::compile_schema(&v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
        assert!(!compiled.has_errors(), "{file}: {:?}", compiled.compilation_errors());
    }
}

#[test]
fn crds_are_namespaced_with_status_and_short_names() {
    let want = [("Dataset", "ds"), ("TrainingJob", "tj"), ("Export", "ex"), ("ModelDeployment", "mdep")];
    for ((_, crd), (kind, short)) in all_crds().into_iter().zip(want) {
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.group, "ocellus.dev");
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["ocellus".to_string()][..]));
        let ver = &crd.spec.versions[0];
        assert_eq!(ver.name, "v1alpha1");
        assert!(ver.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{kind}: status subresource");
        let cols: Vec<_> = ver.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert!(cols.contains(&"Phase") && cols.contains(&"Age"), "{kind}: {cols:?}");
    }
}

fn dataset(spec: Value) -> Value {
    json!({"apiVersion": "ocellus.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}, "spec": spec})
}

#[test]
fn dataset_cel_rules() {
    let ok = dataset(json!({"task": "detect", "source": {"s3": {"uri": "s3://bucket/a.zip"}}}));
    assert_eq!(cel_errors::<Dataset>(ok), Vec::<String>::new());

    // No source yet (the REST APIs create Datasets so, and upload later): allowed, empty or absent.
    let none = dataset(json!({"task": "detect", "source": {}}));
    assert_eq!(cel_errors::<Dataset>(none), Vec::<String>::new());
    let absent = dataset(json!({"task": "detect"}));
    assert_eq!(cel_errors::<Dataset>(absent), Vec::<String>::new());
    let two = dataset(
        json!({"task": "detect", "source": {"s3": {"uri": "s3://b/a.zip"}, "https": {"url": "https://x/a.zip"}}}),
    );
    assert_eq!(cel_errors::<Dataset>(two), vec!["at most one of s3, https or upload may be set"]);

    let dup =
        dataset(json!({"task": "detect", "classNames": ["a", "b", "a"], "source": {"upload": {"objects": ["x.zip"]}}}));
    assert_eq!(cel_errors::<Dataset>(dup), vec!["classNames must be unique"]);

    let ratios = dataset(
        json!({"task": "detect", "source": {"upload": {"objects": ["x.zip"]}}, "split": {"train": 0.7, "val": 0.2, "test": 0.2}}),
    );
    assert_eq!(cel_errors::<Dataset>(ratios), vec!["split ratios must sum to 1"]);
    let ratios_ok = dataset(
        json!({"task": "detect", "source": {"upload": {"objects": ["x.zip"]}}, "split": {"train": 0.7, "val": 0.3}}),
    );
    assert_eq!(cel_errors::<Dataset>(ratios_ok), Vec::<String>::new());

    let versions = dataset(
        json!({"task": "detect", "source": {"upload": {"objects": ["x.zip"]}}, "versions": [{"name": "v1"}, {"name": "v1"}]}),
    );
    assert_eq!(cel_errors::<Dataset>(versions), vec!["version names must be unique"]);
}

fn training_job(spec: Value) -> Value {
    json!({"apiVersion": "ocellus.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": spec})
}

#[test]
fn training_job_cel_rules() {
    let base = json!({"datasetRef": {"name": "d"}, "model": {"architecture": "yolov8n"}});
    assert_eq!(cel_errors::<TrainingJob>(training_job(base.clone())), Vec::<String>::new());

    let mut bad_imgsz = base.clone();
    bad_imgsz["hyperparameters"] = json!({"imgsz": 100});
    assert_eq!(cel_errors::<TrainingJob>(training_job(bad_imgsz)), vec!["imgsz must be a multiple of 32"]);

    let mut both = base.clone();
    both["model"]["from"] = json!({"uri": "s3://b/ckpt.pt", "trainingJob": {"name": "other"}});
    assert_eq!(cel_errors::<TrainingJob>(training_job(both)), vec!["exactly one of uri or trainingJob must be set"]);
    let mut neither = base.clone();
    neither["model"]["from"] = json!({});
    assert_eq!(cel_errors::<TrainingJob>(training_job(neither)), vec!["exactly one of uri or trainingJob must be set"]);
    let mut from_job = base;
    from_job["model"]["from"] = json!({"trainingJob": {"name": "other", "checkpoint": "last"}});
    assert_eq!(cel_errors::<TrainingJob>(training_job(from_job)), Vec::<String>::new());
}

fn export(spec: Value) -> Value {
    json!({"apiVersion": "ocellus.dev/v1alpha1", "kind": "Export", "metadata": {"name": "e"}, "spec": spec})
}

#[test]
fn export_cel_rules() {
    let src = json!({"trainingJob": {"name": "t"}});
    assert_eq!(cel_errors::<Export>(export(json!({"source": src, "format": "onnx"}))), Vec::<String>::new());
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": src, "format": "engine"}))),
        vec!["gpuProduct is required for format engine: a TensorRT engine only runs on the GPU model it was built for"]
    );
    assert_eq!(
        cel_errors::<Export>(export(
            json!({"source": src, "format": "engine", "gpuProduct": "NVIDIA-H100-80GB-HBM3", "half": true})
        )),
        Vec::<String>::new()
    );
    // INT8: onnx and engine; a TrainingJob's Dataset calibrates by default.
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": src, "format": "onnx", "int8": true}))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": src, "format": "engine", "gpuProduct": "x", "int8": true}))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<Export>(export(json!({
            "source": src, "format": "onnx", "int8": true, "maxAccuracyDrop": 0.5,
            "calibration": {"datasetRef": {"name": "d"}, "images": 200, "method": "percentile", "percentile": 99.9}
        }))),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": src, "format": "torchscript", "int8": true}))),
        vec!["int8 is supported for formats onnx and engine"]
    );
    let weights = json!({"weightsUri": "s3://b/w.safetensors"});
    let needs_dataset = "int8 from source.weightsUri needs calibration.datasetRef: there is no TrainingJob whose \
                         Dataset could calibrate it";
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": weights, "format": "onnx", "int8": true}))),
        vec![needs_dataset]
    );
    assert_eq!(
        cel_errors::<Export>(export(
            json!({"source": weights, "format": "onnx", "int8": true, "calibration": {"method": "entropy"}})
        )),
        vec![needs_dataset]
    );
    assert_eq!(
        cel_errors::<Export>(export(
            json!({"source": weights, "format": "onnx", "int8": true, "calibration": {"datasetRef": {"name": "d"}}})
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<Export>(export(json!({
            "source": src, "format": "onnx", "int8": true, "calibration": {"method": "entropy", "percentile": 99.9}
        }))),
        vec!["calibration.percentile is only used by method percentile"]
    );
    assert_eq!(
        cel_errors::<Export>(export(json!({"source": src, "format": "torchscript", "half": true}))),
        vec!["half-precision TorchScript needs a GPU (set gpuProduct)"]
    );
    assert_eq!(
        cel_errors::<Export>(export(
            json!({"source": {"trainingJob": {"name": "t"}, "weightsUri": "s3://b/w.pt"}, "format": "onnx"})
        )),
        vec!["exactly one of trainingJob or weightsUri must be set"]
    );
}

#[test]
fn export_format_names_supported_ones() {
    assert_eq!(ExportFormat::parse("onnx"), Ok(ExportFormat::Onnx));
    let err = ExportFormat::parse("coreml").expect_err("coreml is refused");
    assert!(err.contains("coreml") && err.contains("torchscript, onnx, engine"), "{err}");
}

fn model_deployment(spec: Value) -> Value {
    json!({"apiVersion": "ocellus.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec})
}

#[test]
fn model_deployment_cel_rules() {
    let model = json!({"export": {"name": "e"}});
    assert_eq!(cel_errors::<ModelDeployment>(model_deployment(json!({"model": model}))), Vec::<String>::new());
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(
            json!({"model": model, "scaling": {"minReplicas": 3, "maxReplicas": 2}})
        )),
        vec!["minReplicas must not exceed maxReplicas"]
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(
            json!({"model": model, "scaling": {"minReplicas": 0, "maxReplicas": 2}})
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(json!({"model": model, "backend": "tensorrt"}))),
        vec!["backend tensorrt needs a GPU (resources.gpu.count > 0)"]
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(
            json!({"model": model, "backend": "tensorrt", "resources": {"gpu": {"count": 1}}})
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(
            json!({"model": {"export": {"name": "e"}, "uri": "s3://b/m.onnx", "format": "onnx"}})
        )),
        vec!["exactly one of export, trainingJob or uri must be set"]
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(json!({"model": {"uri": "s3://b/m.onnx"}}))),
        vec!["format must be set together with uri, and only with uri"]
    );
    // deleteOnExpiration deletes at the end of durationHours, so it needs one.
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(json!({"model": model, "deleteOnExpiration": true}))),
        vec!["deleteOnExpiration needs durationHours"]
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(
            json!({"model": model, "deleteOnExpiration": true, "durationHours": 1.5})
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<ModelDeployment>(model_deployment(json!({"model": model, "deleteOnExpiration": false}))),
        Vec::<String>::new()
    );
}

#[test]
fn examples_parse_and_pass_cel() {
    fn check<K: CustomResourceExt + serde::de::DeserializeOwned>(file: &str) {
        let text = repo_file(&format!("examples/{file}"));
        let v: Value = serde_yaml::from_str(&text).expect("yaml");
        let _typed: K = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cel_errors::<K>(v), Vec::<String>::new(), "{file}");
    }
    check::<Dataset>("dataset.yaml");
    check::<TrainingJob>("trainingjob.yaml");
    check::<Export>("export.yaml");
    check::<ModelDeployment>("modeldeployment.yaml");
}

#[test]
fn set_condition_keeps_transition_time_when_status_is_unchanged() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    let t0 = Time(Timestamp::from_second(1_000).expect("ts"));
    let t1 = Time(Timestamp::from_second(2_000).expect("ts"));
    let mut conds = vec![];
    set_condition(&mut conds, Condition::new("Ready", false, "Pending", "waiting"), t0.clone());
    set_condition(&mut conds, Condition::new("Ready", false, "StillPending", "waiting"), t1.clone());
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0].last_transition_time, Some(t0));
    assert_eq!(conds[0].reason.as_deref(), Some("StillPending"));
    set_condition(&mut conds, Condition::new("Ready", true, "Ready", "done"), t1.clone());
    assert_eq!(conds[0].last_transition_time, Some(t1));
    assert!(conds[0].is_true());
}
