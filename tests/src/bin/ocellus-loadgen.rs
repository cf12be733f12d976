//! HTTP load generator for the predictor benchmark: posts images as multipart `file` fields to a
//! URL at a fixed concurrency and prints throughput and latency percentiles as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Endpoint, e.g. http://127.0.0.1:8080/predict.
    #[arg(long, env = "LOADGEN_URL")]
    url: String,
    /// Directory of images (sent round-robin).
    #[arg(long, env = "LOADGEN_IMAGES")]
    images: PathBuf,
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
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&a.images)
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
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no .jpg images in {}", a.images.display()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(a.concurrency)
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| e.to_string())?;
        let send = |i: usize| {
            let (name, bytes) = files[i % files.len()].clone();
            let client = client.clone();
            let url = a.url.clone();
            async move {
                let part = reqwest::multipart::Part::bytes(bytes)
                    .file_name(name)
                    .mime_str("image/jpeg")
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                let r = client
                    .post(url)
                    .multipart(reqwest::multipart::Form::new().part("file", part))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
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
                               "images_per_second": lat.len() as f64 / wall, "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
        );
        Ok(())
    })
}
