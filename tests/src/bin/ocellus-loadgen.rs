//! HTTP load generator for the benchmarks: posts images as multipart `file` fields to a URL (the
//! predictor benchmark), or sends `GET`s (`--get`, the REST list benchmark), at a fixed
//! concurrency, and prints throughput and latency percentiles as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Endpoint, e.g. http://127.0.0.1:8080/predict.
    #[arg(long, env = "LOADGEN_URL")]
    url: String,
    /// Directory of images (sent round-robin); required unless `--get`.
    #[arg(long, env = "LOADGEN_IMAGES", required_unless_present = "get")]
    images: Option<PathBuf>,
    /// Send `GET`s with no body instead of posting images.
    #[arg(long, env = "LOADGEN_GET")]
    get: bool,
    /// Extra request header, `Name: value` (repeatable), e.g. `Authorization: Bearer ...`.
    #[arg(long = "header", env = "LOADGEN_HEADERS", value_delimiter = ';')]
    headers: Vec<String>,
    /// PEM file of a CA to trust for `https://` URLs (e.g. a local cluster's).
    #[arg(long, env = "LOADGEN_CA")]
    ca: Option<PathBuf>,
    /// Client threads.
    #[arg(long, env = "LOADGEN_THREADS", default_value_t = 1)]
    threads: usize,
    /// Requests in flight.
    #[arg(long, env = "LOADGEN_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Measured requests.
    #[arg(long, env = "LOADGEN_REQUESTS", default_value_t = 200)]
    requests: usize,
    /// Warm-up requests (not measured).
    #[arg(long, env = "LOADGEN_WARMUP", default_value_t = 10)]
    warmup: usize,
}

fn main() -> Result<(), String> {
    let a = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    for h in &a.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| format!("--header {h:?}: expected `Name: value`"))?;
        let name = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).map_err(|e| e.to_string())?;
        headers.insert(name, v.trim().parse().map_err(|e| format!("--header {k}: {e}"))?);
    }
    let mut files: Vec<(String, Vec<u8>)> = match &a.images {
        Some(dir) if !a.get => std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "jpeg"))
            .map(|p| {
                (
                    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    std::fs::read(&p).unwrap_or_default(),
                )
            })
            .collect(),
        _ => vec![],
    };
    files.sort();
    if files.is_empty() && !a.get {
        return Err(format!("no .jpg images in {}", a.images.as_deref().unwrap_or(std::path::Path::new("")).display()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(a.concurrency)
            .timeout(Duration::from_secs(120))
            .default_headers(headers);
        if let Some(ca) = &a.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let get = a.get;
        let send = |i: usize| {
            let file = (!get).then(|| files[i % files.len()].clone());
            let client = client.clone();
            let url = a.url.clone();
            async move {
                let t = Instant::now();
                let request = match file {
                    None => client.get(url),
                    Some((name, bytes)) => {
                        let part = reqwest::multipart::Part::bytes(bytes)
                            .file_name(name)
                            .mime_str("image/jpeg")
                            .map_err(|e| e.to_string())?;
                        client.post(url).multipart(reqwest::multipart::Form::new().part("file", part))
                    }
                };
                let r = request.send().await.map_err(|e| e.to_string())?;
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                Ok::<_, String>((t.elapsed(), ok))
            }
        };
        use futures::StreamExt;
        let _: Vec<_> = futures::stream::iter(0..a.warmup).map(send).buffer_unordered(a.concurrency).collect().await;
        let start = Instant::now();
        let results: Vec<Result<(Duration, bool), String>> =
            futures::stream::iter(0..a.requests).map(send).buffer_unordered(a.concurrency).collect().await;
        let wall = start.elapsed().as_secs_f64();
        let mut lat: Vec<f64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|(_, ok)| *ok)
            .map(|(d, _)| d.as_secs_f64() * 1e3)
            .collect();
        let errors = results.len() - lat.len();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
        println!(
            "{}",
            serde_json::json!({"concurrency": a.concurrency, "requests": a.requests, "errors": errors,
                               "images_per_second": lat.len() as f64 / wall, "requests_per_second": lat.len() as f64 / wall,
                               "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
        );
        Ok(())
    })
}
