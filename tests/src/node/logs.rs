//! Container logs: one file per container start, served to the API server at
//! `/containerLogs/{namespace}/{pod}/{container}` so that `kubectl logs` works.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Ctx;

#[derive(Default, Clone)]
struct Entry {
    current: PathBuf,
    previous: Option<PathBuf>,
    running: bool,
}

/// Log files by `namespace/pod/container`.
#[derive(Default)]
pub(crate) struct LogRegistry {
    entries: Mutex<HashMap<String, Entry>>,
}

fn key(ns: &str, pod: &str, c: &str) -> String {
    format!("{ns}/{pod}/{c}")
}

impl LogRegistry {
    /// The log file for a new start of a container.
    pub fn new_log(&self, ns: &str, pod: &str, container: &str, dir: &Path, restart: i32) -> PathBuf {
        let path = dir.join(format!("{container}-{restart}.log"));
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(key(ns, pod, container)).or_default();
        if !e.current.as_os_str().is_empty() {
            e.previous = Some(e.current.clone());
        }
        e.current = path.clone();
        e.running = true;
        path
    }

    /// Marks a container's current log as complete.
    pub fn finish(&self, ns: &str, pod: &str, container: &str) {
        if let Some(e) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key(ns, pod, container)) {
            e.running = false;
        }
    }

    fn get(&self, ns: &str, pod: &str, container: &str) -> Option<Entry> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&key(ns, pod, container)).cloned()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    previous: Option<bool>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn tail(text: &[u8], lines: usize) -> &[u8] {
    let mut count = 0;
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == lines {
                return &text[i + 1..];
            }
        }
    }
    text
}

async fn container_logs(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(entry) = ctx.logs.get(&ns, &pod, &container) else {
        return (StatusCode::NOT_FOUND, format!("container {container:?} in pod {ns}/{pod} has no logs on this node"))
            .into_response();
    };
    let path = if q.previous == Some(true) {
        match entry.previous {
            Some(p) => p,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                )
                    .into_response();
            }
        }
    } else {
        entry.current.clone()
    };
    let data = tokio::fs::read(&path).await.unwrap_or_default();
    let mut start = &data[..];
    if let Some(n) = q.tail_lines {
        start = tail(&data, n);
    }
    let mut initial = start.to_vec();
    if let Some(limit) = q.limit_bytes {
        initial.truncate(limit);
    }
    if q.follow != Some(true) || q.previous == Some(true) {
        return (StatusCode::OK, initial).into_response();
    }
    // Follow: send what is there, then new bytes until the container stops.
    let offset = data.len() as u64;
    let key_ctx = ctx.clone();
    let stream = futures::stream::unfold((Some(initial), offset, path, 0u8), move |(first, off, path, idle)| {
        let ctx = key_ctx.clone();
        let (ns, pod, container) = (ns.clone(), pod.clone(), container.clone());
        async move {
            if let Some(f) = first {
                return Some((Ok::<_, std::io::Error>(f), (None, off, path, 0)));
            }
            let mut idle = idle;
            loop {
                let mut buf = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(off)).await.is_ok()
                {
                    let _ = f.read_to_end(&mut buf).await;
                }
                if !buf.is_empty() {
                    let n = buf.len() as u64;
                    return Some((Ok(buf), (None, off + n, path, 0)));
                }
                let running = ctx.logs.get(&ns, &pod, &container).is_some_and(|e| e.running && e.current == path);
                // After the process stops, read once more (idle) to catch its last writes.
                if !running {
                    idle += 1;
                    if idle > 1 {
                        return None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    Response::new(Body::from_stream(stream))
}

/// A TCP listener that completes a TLS handshake before handing a connection to axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match self.tls.accept(stream).await {
                Ok(s) => return (s, addr),
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the log endpoint over TLS on 127.0.0.1 (the API server always dials kubelets over
/// HTTPS); returns the port.
pub(crate) async fn serve(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<(u16, JoinHandle<()>)> {
    let tls = tls_acceptor(&ctx.cfg.tls_cert, &ctx.cfg.tls_key)?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = tcp.local_addr()?.port();
    let listener = TlsListener { tcp, tls };
    let app = Router::new().route("/containerLogs/{ns}/{pod}/{container}", get(container_logs)).with_state(ctx);
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    });
    Ok((port, h))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_lines() {
        assert_eq!(super::tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(super::tail(b"a\nb\nc", 1), b"c");
        assert_eq!(super::tail(b"a\n", 5), b"a\n");
    }
}
