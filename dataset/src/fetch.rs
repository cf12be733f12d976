//! Fetching a source into a local work directory: S3 object or prefix, HTTPS URL (streamed,
//! with timeouts, retries and resume), or a local path. Archives are extracted safely.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::archive::{self, Limits};
use crate::error::IngestError;
use ocellus_storage::s3::{S3Config, S3Uri, Store};

/// Where a dataset comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An S3 object (archive) or prefix (trailing `/`), with its own connection settings.
    S3 {
        /// The URI.
        uri: S3Uri,
        /// Connection settings.
        config: S3Config,
    },
    /// An archive over HTTP(S).
    Https {
        /// URL.
        url: String,
        /// Extra request headers (e.g. Authorization).
        headers: Vec<(String, String)>,
    },
    /// A local archive or directory.
    Local(PathBuf),
}

/// Downloads/extracts `source` under `work`; returns the directory holding the dataset files.
pub async fn fetch(source: &Source, work: &Path, limits: Limits) -> Result<PathBuf, IngestError> {
    let extracted = work.join("extracted");
    if extracted.exists() {
        std::fs::remove_dir_all(&extracted)?;
    }
    let file = match source {
        Source::Local(p) if p.is_dir() => return Ok(p.clone()),
        Source::Local(p) => p.clone(),
        Source::S3 { uri, config } => {
            let store = Store::new(config, &uri.bucket);
            if uri.key.is_empty() || uri.key.ends_with('/') {
                download_prefix(&store, &uri.key, &extracted, limits).await?;
                return Ok(extracted);
            }
            let dest = work.join("download");
            store
                .download(&uri.key, &dest, limits.max_total_bytes)
                .await
                .map_err(|e| IngestError::Fetch(e.to_string()))?;
            dest
        }
        Source::Https { url, headers } => {
            let dest = work.join("download");
            download_http(url, headers, &dest, limits.max_total_bytes).await?;
            dest
        }
    };
    let limits_copy = limits;
    let ex = extracted.clone();
    let result = tokio::task::spawn_blocking(move || archive::extract(&file, &ex, limits_copy))
        .await
        .map_err(|e| IngestError::Fetch(format!("extraction task: {e}")))?;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&extracted);
        return Err(e.into());
    }
    Ok(extracted)
}

async fn download_prefix(store: &Store, prefix: &str, dest: &Path, limits: Limits) -> Result<(), IngestError> {
    let objects = store.list(prefix).await.map_err(|e| IngestError::Fetch(e.to_string()))?;
    if objects.len() as u64 > limits.max_files {
        return Err(archive::ArchiveError::TooManyFiles(limits.max_files).into());
    }
    let total: u64 = objects.iter().map(|(_, s)| s).sum();
    if total > limits.max_total_bytes {
        return Err(archive::ArchiveError::TooLarge(limits.max_total_bytes).into());
    }
    let jobs = objects.into_iter().filter(|(k, _)| !k.ends_with('/')).map(|(key, size)| {
        let store = store.clone();
        let dest = dest.to_path_buf();
        let prefix = prefix.to_string();
        async move {
            let rel = key.strip_prefix(&prefix).unwrap_or(&key);
            let Some(rel) = archive::safe_relative(rel)? else { return Ok(()) };
            let path = dest.join(rel);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            store.download(&key, &path, size.max(1)).await.map_err(|e| IngestError::Fetch(e.to_string()))?;
            Ok::<_, IngestError>(())
        }
    });
    let results: Vec<Result<(), IngestError>> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    results.into_iter().collect()
}

/// Streams `url` to `dest` with connect/read timeouts and up to five attempts, resuming with a
/// Range request when the server supports it.
pub async fn download_http(
    url: &str,
    headers: &[(String, String)],
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, IngestError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| IngestError::Fetch(e.to_string()))?;
    let fetch_err = |e: String| IngestError::Fetch(format!("{}: {e}", redact(url)));
    // Resuming applies to retries of this download only, never to a file left by another.
    match tokio::fs::remove_file(dest).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut attempt = 0u32;
    loop {
        let have = tokio::fs::metadata(dest).await.map(|m| m.len()).unwrap_or(0);
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let result: Result<Option<u64>, IngestError> = async {
            let resp = req.send().await.map_err(|e| fetch_err(e.to_string()))?;
            let status = resp.status();
            if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
                return Ok(Some(have));
            }
            if !status.is_success() {
                let permanent = status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                let e = fetch_err(format!("HTTP {status}"));
                return if permanent { Err(IngestError::Task(e.to_string())) } else { Err(e) };
            }
            let append = status == reqwest::StatusCode::PARTIAL_CONTENT;
            let mut f = if append {
                tokio::fs::OpenOptions::new().append(true).open(dest).await?
            } else {
                tokio::fs::File::create(dest).await?
            };
            let mut written = if append { have } else { 0 };
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // Keep what arrived, so the retry can resume after it.
                        f.flush().await?;
                        return Err(fetch_err(e.to_string()));
                    }
                };
                written += chunk.len() as u64;
                if written > max_bytes {
                    return Err(archive::ArchiveError::TooLarge(max_bytes).into());
                }
                f.write_all(&chunk).await?;
            }
            f.flush().await?;
            Ok(Some(written))
        }
        .await;
        match result {
            Ok(Some(n)) => return Ok(n),
            Ok(None) => {}
            // 4xx (bad URL, no access) and size caps are not retried.
            Err(e @ (IngestError::Task(_) | IngestError::Archive(_))) => {
                return Err(match e {
                    IngestError::Task(m) => IngestError::Fetch(m),
                    other => other,
                });
            }
            Err(e) if attempt >= 4 => return Err(e),
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "download failed; retrying");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
}

/// A URL without its query string (which may hold a signature).
pub fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}
