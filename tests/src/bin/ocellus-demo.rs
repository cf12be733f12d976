//! `ocellus-demo`: the platform doing its work end to end on the local cluster (`hack/demo.sh`).
//!
//! Starts the control plane with the process-running node and an S3 server, installs the chart
//! (operator and apiserver as pods, a bootstrap API key), uploads a generated shapes dataset
//! through the Ultralytics Platform REST API (create → presigned `PUT` → ingest), applies the
//! TrainingJob, Export and ModelDeployment of `examples/`, shows their progress, sends a
//! held-out image through the gateway while the deployment is at zero, checks the answer against
//! the predictor called directly, and writes the prediction drawn on the image and a report.
//! Then it keeps the platform up until Ctrl-C (or exits with `--exit`) and tears it all down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use image::{Rgb, RgbImage};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client};
use ocellus_crds::{DeploymentPhase, Export, ExportPhase, ModelDeployment, TrainingJob, TrainingPhase};
use ocellus_storage::s3::Store;
use ocellus_tests::cluster::{ClusterOptions, LocalCluster};
use ocellus_tests::fixtures::{self, SHAPES, Sample};
use ocellus_tests::node::{ImageMap, ImageMapping};
use ocellus_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use ocellus_tests::{repo_root, require_tool, workspace_binary};
use serde_json::{Value, json};

/// Namespace (workspace) of the demo's resources and of its API key.
const NS: &str = "demo";
/// The chart's release namespace.
const SYSTEM: &str = "ocellus-system";
/// The platform bucket (the chart's default).
const BUCKET: &str = "ocellus";

#[derive(Parser, Debug)]
#[command(about = "Ocellus end to end on a local cluster: upload, train, export, serve, predict")]
struct Args {
    /// Where the prediction PNG, the report and the kubeconfig go.
    #[arg(long, env = "OCELLUS_DEMO_OUT", default_value = "demo-out")]
    out: PathBuf,
    /// Exit once the report is written, instead of serving until Ctrl-C.
    #[arg(long, env = "OCELLUS_DEMO_EXIT")]
    exit: bool,
    /// Training epochs (default: the example TrainingJob's).
    #[arg(long, env = "OCELLUS_DEMO_EPOCHS")]
    epochs: Option<u32>,
    /// Images in the generated dataset (80% train, 20% val).
    #[arg(long, env = "OCELLUS_DEMO_IMAGES", default_value_t = 200)]
    images: usize,
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\x1b[1m[demo]\x1b[0m {line}");
    let _ = out.flush();
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();
    say("starting an S3 server and the local cluster (etcd, kube-apiserver, controller-manager, scheduler, the node)");
    let s3 = S3Server::start().context("starting the S3 server")?;
    let ort = ocellus_tests::cache_dir().join("lib/libonnxruntime.so");
    let mapping = |image: &str, binary: &str| ImageMapping {
        image: format!("ghcr.io/ocellus-dev/{image}"),
        binary: Some(workspace_binary(binary)),
        env: Default::default(),
    };
    let mut predictor = mapping("ocellus-predictor", "ocellus-predictor");
    predictor.env.insert("ORT_DYLIB_PATH".into(), ort.display().to_string());
    let images = ImageMap {
        images: vec![
            mapping("ocellus-operator", "ocellus-operator"),
            mapping("ocellus-apiserver", "ocellus-apiserver"),
            mapping("ocellus-trainer", "ocellus-trainer"),
            predictor,
        ],
    };
    let cluster = LocalCluster::start(ClusterOptions { gpus: Some(0), images, ..Default::default() })
        .context("starting the local cluster")?;
    std::fs::copy(cluster.kubeconfig(), args.out.join("kubeconfig")).context("copying the kubeconfig")?;
    let report = cluster.block_on(run(&cluster, &s3, &args))?;
    say(&format!("done in {:.0} s: {}", started.elapsed().as_secs_f64(), args.out.join("report.md").display()));
    println!("{report}");
    if !args.exit {
        say(&format!(
            "the platform keeps running (kubectl --kubeconfig {}); Ctrl-C stops it",
            args.out.join("kubeconfig").display()
        ));
        cluster.block_on(ocellus_tests::stop_signal())?;
    }
    say("stopping the cluster and the S3 server");
    drop(cluster);
    drop(s3);
    let _ = std::fs::remove_file(args.out.join("kubeconfig"));
    Ok(())
}

fn tool(c: &LocalCluster, name: &str, args: &[&str]) -> Result<String> {
    let kc = c.kubeconfig().display().to_string();
    let out = Command::new(require_tool(name)).arg("--kubeconfig").arg(&kc).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{name} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 500 ms until it gives a value, for at most `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not done after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(c: &LocalCluster, s3: &S3Server, args: &Args) -> Result<String> {
    let root = repo_root();
    let client = c.client().await?;
    Store::new(&s3.config(), BUCKET).ensure_bucket().await.context("creating the platform bucket")?;

    say("installing the CRDs and the Helm chart (operator and apiserver as pods, a bootstrap API key)");
    tool(c, "kubectl", &["apply", "--validate=false", "-f", &root.join("crds/yaml").display().to_string()])?;
    tool(c, "kubectl", &["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"])?;
    tool(c, "kubectl", &["create", "namespace", NS])?;
    // Workload pods read the bucket's keys from the chart's S3 Secret name in their namespace.
    tool(
        c,
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "ocellus-s3",
            "-n",
            NS,
            &format!("--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}"),
            &format!("--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}"),
        ],
    )?;
    tool(
        c,
        "helm",
        &[
            "install",
            "ocellus",
            &root.join("charts/ocellus").display().to_string(),
            "--skip-crds",
            "-n",
            SYSTEM,
            "--create-namespace",
            "--set",
            &format!("s3.endpoint={}", s3.endpoint()),
            "--set",
            &format!("s3.accessKeyId={ACCESS_KEY}"),
            "--set",
            &format!("s3.secretAccessKey={SECRET_KEY}"),
            "--set",
            &format!("apiKeys.bootstrap.namespace={NS}"),
            "--wait",
            "--timeout",
            "180s",
        ],
    )?;
    let ip = pod_ip(&client, SYSTEM, "app.kubernetes.io/component=apiserver").await?;
    let base = format!("http://{ip}:8000");
    let secret = Api::<Secret>::namespaced(client.clone(), SYSTEM).get("ocellus-bootstrap-api-key").await?;
    let key = secret
        .data
        .and_then(|d| d.get("api-key").map(|v| String::from_utf8_lossy(&v.0).trim().to_string()))
        .ok_or_else(|| anyhow!("no bootstrap key in its Secret"))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    until("the apiserver ready", Duration::from_secs(60), || async {
        Ok(http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200).then_some(()))
    })
    .await?;
    say(&format!("apiserver at {base} (REST APIs and gateway); key in Secret {SYSTEM}/ocellus-bootstrap-api-key"));

    let recorder = tokio::spawn(ocellus_tests::status::record(client.clone(), NS.to_string(), args.out.join("status")));

    // The dataset: generated shapes, and one held-out image the model never sees.
    let size = 160;
    let work = tempdir()?;
    let samples = fixtures::samples(11, args.images, size);
    fixtures::write_yolo(&work.join("shapes"), &samples, size);
    let archive = fixtures::zip_dir(&work.join("shapes"));
    let held_out = fixtures::samples(4242, 1, size).remove(0);
    let dataset = upload(&http, &base, &key, archive).await?;

    // Train, export and serve: the examples, sized for this machine.
    let epochs = args.epochs.unwrap_or(0);
    let manifests = examples(&work, epochs)?;
    say("applying examples/: TrainingJob → Export → ModelDeployment (minReplicas: 0)");
    tool(c, "kubectl", &["apply", "-n", NS, "--validate=false", "-f", &manifests.display().to_string()])?;
    let (tj, train_s) = train(&client).await?;
    export(&client).await?;
    let mds = Api::<ModelDeployment>::namespaced(client.clone(), NS);
    let md = until("the ModelDeployment scaled to zero", Duration::from_secs(300), || async {
        let m = mds.get("shapes").await?;
        Ok(m.status.clone().filter(|s| s.phase == DeploymentPhase::ScaledToZero && s.replicas == 0).map(|_| m))
    })
    .await?;
    say("ModelDeployment shapes: ready at zero replicas");

    // A cold start through the gateway, then the predictor directly: the same answer.
    let gateway = format!("{base}/{NS}/shapes/predict");
    let t = Instant::now();
    let via_gateway = match predict(&http, &gateway, Some(&key), &held_out.jpeg).await {
        Ok(v) => v,
        Err(e) => {
            let logs = tool(c, "kubectl", &["logs", "-n", SYSTEM, "deploy/ocellus-apiserver", "--tail=30"])
                .unwrap_or_default();
            let pods =
                tool(c, "kubectl", &["get", "pods,svc,endpointslices", "-n", NS, "-o", "wide"]).unwrap_or_default();
            return Err(e.context(format!("predicting through the gateway; the apiserver's log:\n{logs}\n{pods}")));
        }
    };
    let cold_start_s = t.elapsed().as_secs_f64();
    say(&format!("cold start: the first request through the gateway answered in {cold_start_s:.1} s"));
    let pod_ip = pod_ip(&client, NS, "ocellus.dev/kind=ModelDeployment,ocellus.dev/name=shapes").await?;
    let direct = predict(&http, &format!("http://{pod_ip}:8080/predict"), None, &held_out.jpeg).await?;
    let (dets, direct_dets) = (detections(&via_gateway), detections(&direct));
    let matches = same_detections(&dets, &direct_dets);
    if !matches {
        bail!("the gateway's answer differs from the predictor's: {dets:?} vs {direct_dets:?}");
    }
    let png = args.out.join("prediction.png");
    draw(&held_out, &dets, &png)?;
    std::fs::write(args.out.join("held-out.jpg"), &held_out.jpeg)?;

    let best = tj.status.as_ref().and_then(|s| s.best_metrics.clone()).unwrap_or_default();
    let epochs_run = tj.status.as_ref().and_then(|s| s.epochs).unwrap_or(0).max(1);
    let facts = json!({
        "apiserver": base,
        "gateway": gateway,
        "openapi": format!("{base}/openapi.json"),
        "dataset": dataset,
        "epochs": epochs_run,
        "map50_95": best.map50_95,
        "map50": best.map50,
        "best_epoch": tj.status.as_ref().and_then(|s| s.best_epoch),
        "train_seconds": train_s,
        "epoch_seconds": train_s / f64::from(epochs_run),
        "cold_start_seconds": cold_start_s,
        "model_version": md.status.as_ref().and_then(|s| s.model_version.clone()),
        "detections": dets,
        "ground_truth": held_out.shapes.iter().map(|s| json!({"class": SHAPES[s.class], "box": [s.x0, s.y0, s.x1, s.y1]})).collect::<Vec<_>>(),
        "detections_match_direct": matches,
        "prediction_png": png.display().to_string(),
    });
    recorder.abort();
    std::fs::write(args.out.join("report.json"), serde_json::to_vec_pretty(&facts)?)?;
    let text = report_md(&facts, &args.out);
    std::fs::write(args.out.join("report.md"), &text)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(text)
}

/// The IP of a pod of `namespace` matching `selector`.
async fn pod_ip(client: &Client, namespace: &str, selector: &str) -> Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default().labels(selector)).await?;
    pods.items.into_iter().find_map(|p| p.status?.pod_ip).ok_or_else(|| anyhow!("no pod with an IP matches {selector}"))
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("ocellus-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Checks an API answer: 2xx and JSON, else the API's own error text.
async fn json_of(r: reqwest::Response, what: &str) -> Result<Value> {
    let status = r.status();
    let body = r.text().await?;
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
}

/// The Ultralytics Platform upload, as `ul cloud train` runs it: summary (the workspace), create,
/// signed URL, `PUT` (no credentials), complete, ingest, then poll until the operator is done.
async fn upload(http: &reqwest::Client, base: &str, key: &str, archive: Vec<u8>) -> Result<Value> {
    let auth = format!("Bearer {key}");
    // A JSON POST to the API with the key; its JSON answer.
    let post = |path: &str, body: Value, what: &'static str| {
        let req = http.post(format!("{base}{path}")).header("authorization", &auth).json(&body);
        async move { json_of(req.send().await?, what).await }
    };
    let owner = json_of(
        http.get(format!("{base}/api/account/summary")).header("authorization", &auth).send().await?,
        "summary",
    )
    .await?["username"]
        .as_str()
        .unwrap_or(NS)
        .to_string();
    let created = post(
        "/api/datasets",
        json!({"dataset": "shapes", "name": "Shapes", "task": "detect", "classNames": SHAPES}),
        "create dataset",
    )
    .await?;
    let size = archive.len();
    let signed = post(
        "/api/upload/signed-url",
        json!({"assetType": "datasets", "assetId": created["id"], "filename": "shapes.zip",
               "contentType": "application/zip", "totalBytes": size}),
        "signed URL",
    )
    .await?;
    let url = signed["uploadUrl"].as_str().ok_or_else(|| anyhow!("no uploadUrl: {signed}"))?;
    let put = http.put(url).header("content-type", "application/octet-stream").body(archive).send().await?;
    if !put.status().is_success() {
        bail!("PUT to the presigned URL: HTTP {}", put.status());
    }
    post("/api/upload/complete", json!({"sessionId": signed["sessionId"]}), "complete").await?;
    post(&format!("/api/datasets/{owner}/shapes/ingest"), json!({"sessionId": signed["sessionId"]}), "ingest").await?;
    say(&format!("uploaded shapes.zip ({} kB) through the REST API; ingesting", size / 1024));
    let d = until("the dataset ingested", Duration::from_secs(300), || async {
        let r = http.get(format!("{base}/api/datasets/{owner}/shapes")).header("authorization", &auth).send().await?;
        let d = json_of(r, "retrieve dataset").await?["dataset"].clone();
        match d["status"].as_str() {
            Some("ready") => Ok(Some(d)),
            Some("failed") => bail!("the ingest failed: {}", d["processingError"]),
            _ => Ok(None),
        }
    })
    .await?;
    say(&format!(
        "dataset shapes ready: {} images ({} train, {} val), {} classes {}, {} boxes",
        d["imageCount"],
        d["splits"]["train"],
        d["splits"]["val"],
        d["classCount"],
        d["classNames"],
        d["annotationCount"]
    ));
    Ok(d)
}

/// The example TrainingJob, Export and ModelDeployment in one file, the training sized for this
/// machine: `epochs` (0 keeps the example's) and at most the CPUs the chart's pods leave.
fn examples(work: &Path, epochs: u32) -> Result<PathBuf> {
    let dir = repo_root().join("examples");
    let mut docs = vec![];
    for f in ["trainingjob.yaml", "export.yaml", "modeldeployment.yaml"] {
        let text = std::fs::read_to_string(dir.join(f))?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text)?;
        if f == "trainingjob.yaml" {
            if epochs > 0 {
                v["spec"]["hyperparameters"]["epochs"] = serde_yaml::Value::from(epochs);
            }
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
            let milli = (cpus * 1000).saturating_sub(500).clamp(500, 2000);
            v["spec"]["resources"]["cpu"] = serde_yaml::Value::from(format!("{milli}m"));
        }
        docs.push(serde_yaml::to_string(&v)?);
    }
    let path = work.join("examples.yaml");
    std::fs::write(&path, docs.join("---\n"))?;
    Ok(path)
}

/// Follows the TrainingJob to the end, a progress bar per epoch; returns it and its seconds.
async fn train(client: &Client) -> Result<(TrainingJob, f64)> {
    let tjs = Api::<TrainingJob>::namespaced(client.clone(), NS);
    let shown = std::cell::RefCell::new((String::new(), -1));
    let t = Instant::now();
    let tj = until("training", Duration::from_secs(3600), || {
        let tjs = tjs.clone();
        let shown = &shown;
        async move {
            let tj = tjs.get("shapes-yolov8n").await?;
            let Some(st) = tj.status.clone() else { return Ok(None) };
            let phase = format!("{:?}", st.phase);
            let epoch = st.epoch.unwrap_or(0);
            if (phase.clone(), epoch) != *shown.borrow() {
                let total = st.epochs.unwrap_or(0).max(1);
                let m = st.latest_metrics.clone().unwrap_or_default();
                let filled = (epoch.max(0) as usize * 24) / total as usize;
                let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
                say(&format!(
                    "train [{}{}] {epoch:>3}/{total}  {phase:<9} box {}  cls {}  mAP50 {}  mAP50-95 {}",
                    "#".repeat(filled),
                    ".".repeat(24 - filled.min(24)),
                    f(m.box_loss),
                    f(m.cls_loss),
                    f(m.map50),
                    f(m.map50_95),
                ));
                *shown.borrow_mut() = (phase, epoch);
            }
            match st.phase {
                TrainingPhase::Succeeded => Ok(Some(tj)),
                TrainingPhase::Failed => bail!("training failed: {:?}", st.job.failure),
                _ => Ok(None),
            }
        }
    })
    .await?;
    let s = tj.status.as_ref().and_then(|s| Some((s.job.start_time.clone()?, s.job.completion_time.clone()?)));
    let secs = s
        .map(|(a, b)| (b.0.as_millisecond() - a.0.as_millisecond()) as f64 / 1000.0)
        .unwrap_or_else(|| t.elapsed().as_secs_f64());
    Ok((tj, secs))
}

async fn export(client: &Client) -> Result<()> {
    let exports = Api::<Export>::namespaced(client.clone(), NS);
    let last = std::cell::Cell::new(None);
    until("the export", Duration::from_secs(600), || {
        let exports = exports.clone();
        let last = &last;
        async move {
            let e = exports.get("shapes-yolov8n-onnx").await?;
            let Some(st) = e.status.clone() else { return Ok(None) };
            if last.get() != Some(st.phase) {
                say(&format!("export shapes-yolov8n-onnx: {:?}", st.phase));
                last.set(Some(st.phase));
            }
            match st.phase {
                ExportPhase::Succeeded => {
                    if let Some(a) = st.artifact {
                        say(&format!("  {} ({} kB, sha256 {})", a.uri, a.size_bytes / 1024, &a.sha256[..12]));
                    }
                    Ok(Some(()))
                }
                ExportPhase::Failed => bail!("the export failed: {:?}", st.job.failure),
                _ => Ok(None),
            }
        }
    })
    .await
}

async fn predict(http: &reqwest::Client, url: &str, key: Option<&str>, jpeg: &[u8]) -> Result<Value> {
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(jpeg.to_vec()).file_name("held-out.jpg").mime_str("image/jpeg")?)
        .text("conf", "0.25");
    let mut req = http.post(url).multipart(form);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    json_of(req.send().await?, "predict").await
}

/// `(class name, confidence, [x1, y1, x2, y2])` of an Ultralytics answer's first image.
fn detections(v: &Value) -> Vec<(String, f64, [f64; 4])> {
    v["images"][0]["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let b = &r["box"];
                    let n = |k: &str| b[k].as_f64().unwrap_or(0.0);
                    (
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["confidence"].as_f64().unwrap_or(0.0),
                        [n("x1"), n("y1"), n("x2"), n("y2")],
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn same_detections(a: &[(String, f64, [f64; 4])], b: &[(String, f64, [f64; 4])]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0 && (x.1 - y.1).abs() < 1e-3 && x.2.iter().zip(&y.2).all(|(p, q)| (p - q).abs() < 0.5)
        })
}

/// The held-out image, 4× larger, with the ground truth in green and the detections in red.
fn draw(sample: &Sample, dets: &[(String, f64, [f64; 4])], path: &Path) -> Result<()> {
    const SCALE: u32 = 4;
    let img = image::load_from_memory(&sample.jpeg)?.to_rgb8();
    let mut big = image::imageops::resize(&img, img.width() * SCALE, img.height() * SCALE, image::imageops::Nearest);
    for s in &sample.shapes {
        rect(&mut big, [s.x0, s.y0, s.x1, s.y1].map(f64::from), SCALE, Rgb([0, 200, 0]), 1);
    }
    for (_, _, b) in dets {
        rect(&mut big, *b, SCALE, Rgb([230, 20, 20]), 2);
    }
    big.save(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn rect(img: &mut RgbImage, b: [f64; 4], scale: u32, color: Rgb<u8>, width: u32) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let s = f64::from(scale);
    let [x1, y1, x2, y2] = b.map(|v| (v * s).round() as i64);
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, color);
        }
    };
    for t in 0..i64::from(width) {
        for x in x1..=x2 {
            put(x, y1 + t);
            put(x, y2 - t);
        }
        for y in y1..=y2 {
            put(x1 + t, y);
            put(x2 - t, y);
        }
    }
}

fn report_md(f: &Value, out: &Path) -> String {
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
    let dets: Vec<String> = f["detections"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let b: Vec<String> = d[2]
                        .as_array()
                        .map(|b| b.iter().map(|x| format!("{:.0}", x.as_f64().unwrap_or(0.0))).collect())
                        .unwrap_or_default();
                    format!(
                        "- {} {:.2} at [{}]",
                        d[0].as_str().unwrap_or_default(),
                        d[1].as_f64().unwrap_or(0.0),
                        b.join(", ")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let truth: Vec<String> = f["ground_truth"]
        .as_array()
        .map(|a| a.iter().map(|g| format!("- {} at {}", g["class"].as_str().unwrap_or_default(), g["box"])).collect())
        .unwrap_or_default();
    format!(
        "# Ocellus demo report\n\n\
         | | |\n| --- | --- |\n\
         | dataset | {images} images through the Ultralytics upload API ({train} train, {val} val) |\n\
         | training | {epochs} epochs, {epoch_s:.1} s per epoch ({train_s:.0} s), best epoch {best} |\n\
         | validation mAP50-95 | {map} (mAP50 {map50}) |\n\
         | cold start | {cold:.1} s from zero replicas to the answer, through the gateway |\n\
         | gateway | {gateway} |\n\
         | OpenAPI | {openapi} |\n\n\
         Detections on the held-out image (red in {png}; ground truth in green), the same as the \
         predictor's own answer:\n\n{dets}\n\nGround truth:\n\n{truth}\n\n\
         ## Call it\n\n\
         ```sh\n\
         export KUBECONFIG={kc}\n\
         KEY=$(kubectl get secret ocellus-bootstrap-api-key -n {SYSTEM} -o jsonpath='{{.data.api-key}}' | base64 -d)\n\
         curl -H \"Authorization: Bearer $KEY\" -F file=@{held} -F conf=0.25 {gateway}\n\
         curl -H \"Authorization: Bearer $KEY\" {api}/api/datasets/{NS}\n\
         ```\n\n\
         With the Ultralytics Platform SDK (`pip install ultralytics-platform`):\n\n\
         ```python\n\
         from ultralytics_platform import Platform\n\
         p = Platform(base_url=\"{api}\", api_key=KEY)\n\
         print(p.datasets.retrieve(\"{NS}\", \"shapes\")[\"dataset\"][\"imageCount\"])\n\
         ```\n",
        images = f["dataset"]["imageCount"],
        train = f["dataset"]["splits"]["train"],
        val = f["dataset"]["splits"]["val"],
        epochs = f["epochs"],
        epoch_s = f["epoch_seconds"].as_f64().unwrap_or(0.0),
        train_s = f["train_seconds"].as_f64().unwrap_or(0.0),
        best = f["best_epoch"],
        map = num(&f["map50_95"]),
        map50 = num(&f["map50"]),
        cold = f["cold_start_seconds"].as_f64().unwrap_or(0.0),
        gateway = f["gateway"].as_str().unwrap_or_default(),
        openapi = f["openapi"].as_str().unwrap_or_default(),
        api = f["apiserver"].as_str().unwrap_or_default(),
        png = f["prediction_png"].as_str().unwrap_or_default(),
        dets = if dets.is_empty() { "- none above conf 0.25".into() } else { dets.join("\n") },
        truth = truth.join("\n"),
        kc = out.join("kubeconfig").display(),
        held = out.join("held-out.jpg").display(),
    )
}
