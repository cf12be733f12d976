//! Container logs: one file per container start, served to the API server at
//! `/containerLogs/{namespace}/{pod}/{container}` so that `kubectl logs` works.
//!
//! A container's stdout and stderr share one pipe (their interleaving stays the process's own);
//! a thread per start reads it and appends one record per line to the file, stamped with the
//! time the read returned: when the process wrote the line, to within the thread's wake-up
//! (lines that arrive in one read share its time). The format is the CRI log format
//! real kubelets keep, less the stream (one pipe has one): `<time> <tag> <content>\n`, with the
//! time in RFC 3339 UTC with nanoseconds, tag `F` for a line whose newline was written and `P`
//! for a part of one still being written (content without a newline, such as a prompt, appears
//! at once; the next record continues that line).
//!
//! The endpoint serves the plain bytes the process wrote, as kubelets do, and supports
//! `follow`, `previous`, `tailLines`, `limitBytes`, `timestamps` (each line prefixed with the
//! time its first part was written and a space) and `sinceTime`/`sinceSeconds` (only lines
//! written at or after).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{oneshot, watch};
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

/// Records a container's output from `pipe` into the log file `path` (created now), on a thread
/// of its own, until every writer has closed the pipe; the receiver resolves then, once the
/// last line is in the file.
pub(crate) fn capture(mut pipe: std::io::PipeReader, path: &Path) -> std::io::Result<oneshot::Receiver<()>> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let (done, drained) = oneshot::channel();
    std::thread::Builder::new().name("ocellus-node-log".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            out.clear();
            write_records(&buf[..n], &stamp(Timestamp::now()), &mut out);
            // One write per read, so that readers of the file see whole records. A failed write
            // loses those lines; the pipe is still drained, never left to block the process.
            let _ = file.write_all(&out);
        }
        let _ = done.send(());
    })?;
    Ok(drained)
}

/// A time as records and `timestamps=true` show it: RFC 3339 in UTC with exactly nine fraction
/// digits (the kubelet's output format; fixed width, so that lines sort by time as text).
fn stamp(t: Timestamp) -> String {
    format!("{t:.9}")
}

/// Appends the records of `chunk`, output read at `time`, to `out`: one `F` record per line
/// ended in it, and a `P` record for a line still without its newline.
fn write_records(chunk: &[u8], time: &str, out: &mut Vec<u8>) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (content, tag, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], b'F', &rest[i + 1..]),
            None => (rest, b'P', &rest[rest.len()..]),
        };
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(&[b' ', tag, b' ']);
        out.extend_from_slice(content);
        out.push(b'\n');
        rest = next;
    }
}

/// One record of a log file.
#[derive(Debug, PartialEq)]
struct Record<'a> {
    /// When it was written, as [`stamp`] wrote it; empty when unknown.
    time: &'a [u8],
    /// `P`: a part of a line, continued by the next record.
    partial: bool,
    /// The bytes the process wrote, without the newline.
    content: &'a [u8],
}

/// Parses a record (without its newline). A line in any other format (none is written) counts
/// as a whole line of content at an unknown time.
fn parse_record(line: &[u8]) -> Record<'_> {
    let parsed = line.iter().position(|b| *b == b' ').and_then(|sp| {
        let (time, rest) = (&line[..sp], &line[sp + 1..]);
        let partial = match rest {
            [b'F', b' ', ..] => false,
            [b'P', b' ', ..] => true,
            _ => return None,
        };
        Some(Record { time, partial, content: &rest[2..] })
    });
    parsed.unwrap_or(Record { time: b"", partial: false, content: line })
}

/// The complete records of `data`, and the length of `data` they span: a record still being
/// written is left for a later read.
fn split_records(data: &[u8]) -> (Vec<Record<'_>>, usize) {
    let Some(last) = data.iter().rposition(|b| *b == b'\n') else { return (vec![], 0) };
    (data[..last].split(|b| *b == b'\n').map(parse_record).collect(), last + 1)
}

/// Index of the first record of the last `lines` lines (a line ends with an `F` record; a
/// line still being written counts as one).
fn tail_start(records: &[Record], lines: usize) -> usize {
    if lines == 0 {
        return records.len();
    }
    let mut count = 0;
    for i in (0..records.len()).rev() {
        if i == 0 || !records[i - 1].partial {
            count += 1;
            if count == lines {
                return i;
            }
        }
    }
    0
}

/// What a log request shows besides the lines themselves.
#[derive(Clone, Debug, Default, PartialEq)]
struct View {
    /// Prefix each line with the time its first part was written, and a space.
    timestamps: bool,
    /// Only lines whose first part was written at or after this time.
    since: Option<Timestamp>,
}

/// The view a query asks for, at `now` (pure). With both `sinceTime` and `sinceSeconds`, the
/// later time wins, as on kubelets.
fn view_of(q: &LogQuery, now: Timestamp) -> Result<View, String> {
    let after_seconds =
        q.since_seconds.map(|s| now.checked_sub(SignedDuration::from_secs(s)).unwrap_or(Timestamp::MIN));
    let at_time = match &q.since_time {
        Some(t) => Some(t.parse::<Timestamp>().map_err(|e| format!("sinceTime {t:?} is not an RFC 3339 time: {e}"))?),
        None => None,
    };
    Ok(View { timestamps: q.timestamps == Some(true), since: after_seconds.max(at_time) })
}

/// Turns records into the bytes served, one at a time, so that `follow` goes on where the first
/// read stopped: a line's parts are joined, and its time and filter are those of its first part.
#[derive(Debug)]
struct Renderer {
    view: View,
    /// The last record was a part of a line.
    mid_line: bool,
    /// The current line passes `since`.
    keep: bool,
}

impl Renderer {
    fn new(view: View) -> Self {
        Renderer { view, mid_line: false, keep: true }
    }

    fn push(&mut self, r: &Record, out: &mut Vec<u8>) {
        if !self.mid_line {
            let time = || std::str::from_utf8(r.time).ok()?.parse::<Timestamp>().ok();
            self.keep = self.view.since.is_none_or(|since| time().is_none_or(|t| t >= since));
            if self.keep && self.view.timestamps && !r.time.is_empty() {
                out.extend_from_slice(r.time);
                out.push(b' ');
            }
        }
        if self.keep {
            out.extend_from_slice(r.content);
            if !r.partial {
                out.push(b'\n');
            }
        }
        self.mid_line = r.partial;
    }
}

/// Renders the last `tail` lines of the complete records of a log file as `view` says (pure).
/// Returns the output, the length of `data` read, and the renderer to go on with.
fn render(data: &[u8], tail: Option<usize>, view: View) -> (Vec<u8>, usize, Renderer) {
    let (records, used) = split_records(data);
    let start = tail.map_or(0, |n| tail_start(&records, n));
    let mut r = Renderer::new(view);
    let mut out = Vec::with_capacity(used);
    for rec in &records[start..] {
        r.push(rec, &mut out);
    }
    (out, used, r)
}

/// A log file as the bytes the process wrote (pure); termination messages are read from it.
pub(crate) fn plain(data: &[u8]) -> Vec<u8> {
    render(data, None, View::default()).0
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    previous: Option<bool>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    timestamps: Option<bool>,
    since_time: Option<String>,
    since_seconds: Option<i64>,
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
    let view = match view_of(&q, Timestamp::now()) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
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
    let (mut initial, used, renderer) = render(&data, q.tail_lines, view);
    if let Some(limit) = q.limit_bytes {
        initial.truncate(limit);
    }
    if q.follow != Some(true) || q.previous == Some(true) {
        return (StatusCode::OK, initial).into_response();
    }
    // Follow: send what is there, then new lines until the container stops.
    let state = (Some(initial), used as u64, path, 0u8, renderer);
    let stream = futures::stream::unfold(state, move |(first, off, path, idle, mut renderer)| {
        let ctx = ctx.clone();
        let (ns, pod, container) = (ns.clone(), pod.clone(), container.clone());
        async move {
            if let Some(f) = first {
                return Some((Ok::<_, std::io::Error>(f), (None, off, path, 0, renderer)));
            }
            let (mut idle, mut off) = (idle, off);
            loop {
                let mut buf = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(off)).await.is_ok()
                {
                    let _ = f.read_to_end(&mut buf).await;
                }
                let (records, used) = split_records(&buf);
                let mut out = Vec::new();
                for r in &records {
                    renderer.push(r, &mut out);
                }
                off += used as u64;
                if !out.is_empty() {
                    return Some((Ok(out), (None, off, path, 0, renderer)));
                }
                if used > 0 {
                    // Only lines before `since`: look for more at once.
                    continue;
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
    use super::*;

    const T1: &str = "2026-12-02T05:00:00.000000001Z";
    const T2: &str = "2026-12-02T05:00:01.500000000Z";
    const T3: &str = "2026-12-02T05:00:02.000000000Z";

    /// A log file of `chunks`, each read from the pipe at its time.
    fn file(chunks: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (time, chunk) in chunks {
            write_records(chunk.as_bytes(), time, &mut out);
        }
        out
    }

    fn show(data: &[u8], tail: Option<usize>, view: View) -> String {
        String::from_utf8(render(data, tail, view).0).expect("utf-8")
    }

    fn at(t: &str) -> Timestamp {
        t.parse().expect("time")
    }

    #[test]
    fn stamps_are_utc_with_nine_fraction_digits() {
        assert_eq!(stamp(at("2026-12-02T05:00:00.123456789Z")), "2026-12-02T05:00:00.123456789Z");
        assert_eq!(stamp(at("2026-12-02T06:00:00+01:00")), "2026-12-02T05:00:00.000000000Z");
        assert_eq!(stamp(at(T2)), T2);
    }

    #[test]
    fn records_are_one_per_line_and_partial_for_a_line_without_its_newline() {
        let f = file(&[(T1, "a\n\nb"), (T2, "c\n")]);
        let want = format!("{T1} F a\n{T1} F \n{T1} P b\n{T2} F c\n");
        assert_eq!(String::from_utf8_lossy(&f), want);
        let (records, used) = split_records(&f);
        assert_eq!(used, f.len());
        assert_eq!(records[2], Record { time: T1.as_bytes(), partial: true, content: b"b" });
        assert_eq!(records[1], Record { time: T1.as_bytes(), partial: false, content: b"" });
        // Content may hold anything but a newline, spaces and tags included.
        let odd = file(&[(T1, "F P  x \r\n")]);
        assert_eq!(split_records(&odd).0[0].content, b"F P  x \r");
        // A line in no known format is a whole line at an unknown time.
        assert_eq!(parse_record(b"hello"), Record { time: b"", partial: false, content: b"hello" });
    }

    #[test]
    fn a_record_still_being_written_is_left_for_later() {
        let mut f = file(&[(T1, "a\n")]);
        let whole = f.len();
        f.extend_from_slice(format!("{T2} F hal").as_bytes());
        let (records, used) = split_records(&f);
        assert_eq!((records.len(), used), (1, whole));
        assert_eq!(split_records(b"").1, 0);
        assert_eq!(show(&f, None, View::default()), "a\n");
    }

    #[test]
    fn plain_output_is_the_bytes_the_process_wrote_however_they_were_read() {
        let written = "one\ntwo\n\nthree is long\npartial";
        for split in 0..=written.len() {
            for second in split..=written.len() {
                let chunks = [(T1, &written[..split]), (T2, &written[split..second]), (T3, &written[second..])];
                assert_eq!(plain(&file(&chunks)), written.as_bytes(), "read as {chunks:?}");
            }
        }
        assert_eq!(plain(b""), b"");
    }

    #[test]
    fn tail_counts_lines_not_records() {
        let f = file(&[(T1, "a\nb\nc\n")]);
        assert_eq!(show(&f, Some(2), View::default()), "b\nc\n");
        assert_eq!(show(&f, Some(5), View::default()), "a\nb\nc\n");
        assert_eq!(show(&f, Some(0), View::default()), "");
        // A line read in parts is one line; a line still being written counts as one.
        let parts = file(&[(T1, "a\nb"), (T2, "b\nc")]);
        assert_eq!(show(&parts, Some(1), View::default()), "c");
        assert_eq!(show(&parts, Some(2), View::default()), "bb\nc");
    }

    #[test]
    fn timestamps_prefix_each_line_with_the_time_of_its_first_part() {
        let f = file(&[(T1, "a\nhal"), (T2, "f\n"), (T3, "wait")]);
        let view = View { timestamps: true, since: None };
        assert_eq!(show(&f, None, view.clone()), format!("{T1} a\n{T1} half\n{T3} wait"));
        assert_eq!(show(&f, Some(1), view), format!("{T3} wait"));
    }

    #[test]
    fn since_keeps_lines_begun_at_or_after_it() {
        let f = file(&[(T1, "old\nhal"), (T2, "f\nnew\n"), (T3, "newer\n")]);
        let since = |t: &str| View { timestamps: false, since: Some(at(t)) };
        assert_eq!(show(&f, None, since(T1)), "old\nhalf\nnew\nnewer\n");
        assert_eq!(show(&f, None, since("2026-12-02T05:00:01Z")), "new\nnewer\n", "half began at T1");
        assert_eq!(show(&f, None, since(T2)), "new\nnewer\n");
        assert_eq!(show(&f, None, since(T3)), "newer\n");
        assert_eq!(show(&f, Some(1), since(T1)), "newer\n");
        assert_eq!(show(&f, None, since("2027-01-01T00:00:00Z")), "");
    }

    #[test]
    fn following_renders_record_by_record_like_one_read() {
        let f = file(&[(T1, "old\nhal"), (T2, "f\nnew\n"), (T3, "x")]);
        let view = View { timestamps: true, since: Some(at("2026-12-02T05:00:01Z")) };
        let (all, _, _) = render(&f, None, view.clone());
        for cut in 0..=f.len() {
            let (mut out, used, mut r) = render(&f[..cut], None, view.clone());
            for rec in split_records(&f[used..]).0 {
                r.push(&rec, &mut out);
            }
            assert_eq!(out, all, "first read of {cut} bytes");
        }
    }

    fn query(since_time: Option<&str>, since_seconds: Option<i64>) -> LogQuery {
        LogQuery {
            follow: None,
            previous: None,
            tail_lines: None,
            limit_bytes: None,
            timestamps: Some(true),
            since_time: since_time.map(String::from),
            since_seconds,
        }
    }

    #[test]
    fn since_time_and_since_seconds_the_later_wins() {
        let now = at("2026-12-02T05:00:10Z");
        assert_eq!(view_of(&query(None, None), now), Ok(View { timestamps: true, since: None }));
        assert_eq!(view_of(&query(None, Some(10)), now).map(|v| v.since), Ok(Some(at("2026-12-02T05:00:00Z"))));
        assert_eq!(
            view_of(&query(Some("2026-12-02T06:00:05+01:00"), None), now).map(|v| v.since),
            Ok(Some(at("2026-12-02T05:00:05Z")))
        );
        assert_eq!(
            view_of(&query(Some("2026-12-02T05:00:05Z"), Some(2)), now).map(|v| v.since),
            Ok(Some(at("2026-12-02T05:00:08Z")))
        );
        assert!(view_of(&query(Some("yesterday"), None), now).is_err_and(|e| e.contains("sinceTime")));
    }

    #[test]
    fn capture_records_lines_when_the_process_writes_them() {
        let dir = std::env::temp_dir().join(format!("ocellus-node-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("main-0.log");
        let _ = std::fs::remove_file(&path);
        // stdout and stderr in the order written; a line finished 0.3 s after it began.
        let spec = crate::proc::Spec {
            program: "sh".into(),
            args: vec!["-c".into(), "echo one; printf two >&2; sleep 0.3; echo ' three'; printf four".into()],
            ..Default::default()
        };
        let (mut child, pipe) = crate::proc::spawn_piped(spec).expect("spawn");
        let drained = capture(pipe, &path).expect("capture");
        assert!(child.wait().expect("wait").success());
        drained.blocking_recv().expect("drained");
        let data = std::fs::read(&path).expect("log");
        assert_eq!(plain(&data), b"one\ntwo three\nfour");
        let (records, _) = split_records(&data);
        let time = |i: usize| at(std::str::from_utf8(records[i].time).expect("utf-8"));
        let two = records.iter().position(|r| r.content == b"two").expect("two");
        assert!(records[two].partial);
        let gap = time(two + 1).duration_since(time(two));
        assert!(gap >= SignedDuration::from_millis(250), "times are when lines were written: {gap:?}");
        let shown = show(&data, None, View { timestamps: true, since: None });
        assert!(shown.contains(&format!("{} two three\n", stamp(time(two)))), "{shown}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
