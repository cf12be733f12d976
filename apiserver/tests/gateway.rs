//! The gateway over real HTTP, without a cluster: small axum servers on 127.0.0.1 stand in for
//! predictor pods, and the tests feed the index as the watches would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ocellus_apiserver::gateway::{
    DeploymentInfo, DeploymentKey, Gateway, GatewayConfig, Lifecycle, WakeReceiver, WakeRequest,
};
use ocellus_apiserver::{AppState, app};
use ocellus_common::Health;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A stand-in predictor pod: echoes what it received as JSON, after an optional delay.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn upstream(tag: &'static str, delay: Duration) -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            echo(tag, req).await
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    Upstream { addr, hits }
}

async fn echo(tag: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers.entry(k.as_str().to_string()).or_default().push(v.to_str().unwrap_or("?").to_string());
    }
    let status = parts
        .headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = (
        status,
        axum::Json(json!({
            "tag": tag,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body": body.to_vec(),
        })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert("x-upstream", HeaderValue::from_static("yes"));
    h.insert("connection", HeaderValue::from_static("x-resp-hop"));
    h.insert("x-resp-hop", HeaderValue::from_static("drop me"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    resp
}

/// A port with nothing listening (connections refused).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A pod that reads a request's head and dies without answering.
async fn crashing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            s.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (addr, seen)
}

struct Gw {
    gateway: Gateway,
    wakes: WakeReceiver,
    registry: prometheus::Registry,
    base: String,
}

impl Gw {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn metrics(&self) -> String {
        ocellus_common::render_metrics(&self.registry).expect("metrics")
    }

    fn metric(&self, line_prefix: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn deploy(&self, name: &str, lifecycle: Lifecycle, version: Option<&str>) -> DeploymentKey {
        let key = DeploymentKey::new("team-a", name);
        self.gateway
            .index()
            .set_deployment(&key, Some(DeploymentInfo { lifecycle, model_version: version.map(str::to_string) }));
        key
    }

    async fn wait_held(&self, key: &DeploymentKey, n: usize) {
        let start = Instant::now();
        while self.gateway.index().held(key) != n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "held stayed {} (want {n})",
                self.gateway.index().held(key)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn start(config: GatewayConfig) -> Gw {
    let registry = prometheus::Registry::new();
    let (gateway, wakes) = Gateway::new(config, &registry).expect("gateway");
    gateway.index().mark_synced();
    let health = Health::new(registry.clone());
    health.set_ready(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app(AppState { health, gateway: gateway.clone() });
    tokio::spawn(async move { axum::serve(listener, router).await });
    Gw { gateway, wakes, registry, base: format!("http://{addr}") }
}

fn fast() -> GatewayConfig {
    GatewayConfig { hold_timeout: Duration::from_secs(10), ..GatewayConfig::default() }
}

/// Sends raw bytes (with `Connection: close`) and returns status, headers and the decoded body.
async fn raw(base: &str, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut sock = TcpStream::connect(base.trim_start_matches("http://")).await.expect("connect");
    sock.write_all(request).await.expect("write");
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp).await.expect("read");
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = resp[split..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v == "chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("utf8").trim(), 16).expect("hex");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    (status, headers, body)
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body_verbatim() {
    let gw = start(fast()).await;
    let up = upstream("a", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, Some("0123456789ab"));
    gw.gateway.index().set_endpoints(&key, [up.addr]);

    let body: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let mut req = format!(
        "PATCH /team-a/det/v2/models/m%20x/infer?a=1&b=%2F&a=2 HTTP/1.1\r\n\
         Host: gateway.example:8000\r\n\
         Connection: close, X-Hop\r\n\
         X-Hop: secret-hop\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Upgrade: h2c\r\n\
         Proxy-Authorization: Basic cHJveHk6cHc=\r\n\
         Authorization: Bearer end-to-end\r\n\
         X-Custom: one\r\n\
         X-Custom: two\r\n\
         X-Status: 201\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, headers, resp) = raw(&gw.base, &req).await;
    assert_eq!(status, 201, "the pod's status");
    let echo: Value = serde_json::from_slice(&resp).expect("json");
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["path"], "/v2/models/m%20x/infer");
    assert_eq!(echo["query"], "a=1&b=%2F&a=2");
    let got: Vec<u8> = serde_json::from_value(echo["body"].clone()).expect("body");
    assert_eq!(got, body);
    let h = &echo["headers"];
    assert_eq!(h["x-custom"], json!(["one", "two"]));
    assert_eq!(h["authorization"], json!(["Bearer end-to-end"]));
    assert_eq!(h["content-type"], json!(["application/octet-stream"]));
    assert_eq!(h["content-length"], json!([body.len().to_string()]));
    assert_eq!(h["x-forwarded-host"], json!(["gateway.example:8000"]));
    assert_eq!(h["x-forwarded-prefix"], json!(["/team-a/det"]));
    assert_eq!(h["host"], json!([up.addr.to_string()]), "Host names the pod");
    for hop in ["x-hop", "keep-alive", "te", "upgrade", "proxy-authorization"] {
        assert!(h.get(hop).is_none(), "{hop} reached the pod: {h}");
    }
    // The connection header the pod got is its own client's, not the caller's `close, X-Hop`.
    assert_ne!(h["connection"], json!(["close, X-Hop"]));
    // Response: end-to-end headers kept, hop-by-hop ones (and those `Connection` names) dropped.
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    assert!(has("x-upstream"));
    assert!(!has("x-resp-hop") && !has("keep-alive"), "{headers:?}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn forwards_ultralytics_multipart_and_the_root_path() {
    let gw = start(fast()).await;
    let up = upstream("a", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let client = reqwest::Client::new();
    let boundary = "XyZ123";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&[0xff, 0xd8, 0xff, 0x00, 0x01, 0x02]);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"conf\"\r\n\r\n0.5\r\n--{boundary}--\r\n")
            .as_bytes(),
    );
    let r = client
        .post(gw.url("/team-a/det/predict?imgsz=640"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.expect("json");
    assert_eq!(echo["path"], "/predict");
    assert_eq!(echo["query"], "imgsz=640");
    assert_eq!(echo["headers"]["content-type"], json!([format!("multipart/form-data; boundary={boundary}")]));
    let got: Vec<u8> = serde_json::from_value(echo["body"].clone()).expect("body");
    assert_eq!(got, body);

    let echo: Value = client.get(gw.url("/team-a/det/")).send().await.expect("send").json().await.expect("json");
    assert_eq!(echo["path"], "/");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["query"], Value::Null);
}

#[tokio::test]
async fn streams_the_response_and_counts_it_in_flight_until_done() {
    let gw = start(fast()).await;
    let release = Arc::new(Notify::new());
    let r2 = release.clone();
    let router = Router::new().fallback(move || {
        let release = r2.clone();
        async move {
            let stream = async_stream(release);
            Body::from_stream(stream)
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, router).await });
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [addr]);
    let mut r = reqwest::get(gw.url("/team-a/det/stream")).await.expect("get");
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.expect("chunk").expect("some");
    assert_eq!(&first[..], b"first;", "the first chunk arrives before the pod has finished");
    assert_eq!(gw.gateway.index().endpoints(&key), vec![(addr, 1)], "in flight while streaming");
    release.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.expect("chunk") {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"second");
    let start = Instant::now();
    while gw.gateway.index().endpoints(&key) != vec![(addr, 0)] {
        assert!(start.elapsed() < Duration::from_secs(2), "still in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn async_stream(release: Arc<Notify>) -> impl futures::Stream<Item = Result<&'static [u8], std::io::Error>> {
    futures::stream::unfold(0, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok(&b"first;"[..]), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(&b"second"[..]), 2))
                }
                _ => None,
            }
        }
    })
}

#[tokio::test]
async fn least_in_flight_sends_fewer_requests_to_a_slow_pod() {
    let gw = start(fast()).await;
    let slow = upstream("slow", Duration::from_millis(400)).await;
    let quick = upstream("quick", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [slow.addr, quick.addr]);
    // Four clients share 40 requests, each sending its next as soon as its last is answered.
    let client = reqwest::Client::new();
    let issued = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, issued) = (client.clone(), gw.url("/team-a/det/predict"), issued.clone());
        workers.push(tokio::spawn(async move {
            while issued.fetch_add(1, Ordering::SeqCst) < 40 {
                let r = client.post(&url).body("x").send().await.expect("send");
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let (s, q) = (slow.hits.load(Ordering::SeqCst), quick.hits.load(Ordering::SeqCst));
    assert_eq!(s + q, 40);
    // Round-robin would give 20 each; least in-flight gives the slow pod only requests that
    // arrive while both are equally busy (the first burst).
    assert!(s <= 4, "slow pod got {s} of 40 (quick {q})");
    assert_eq!(gw.gateway.index().endpoints(&key), vec![(slow.addr, 0), (quick.addr, 0)]);
    assert_eq!(gw.metric("ocellus_gateway_requests_total{code_class=\"2xx\"}"), Some(40.0));
}

#[tokio::test]
async fn holds_while_none_is_ready_wakes_and_forwards_when_one_is() {
    let mut gw = start(fast()).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    let url = gw.url("/team-a/det/predict");
    let pending = tokio::spawn(async move { reqwest::Client::new().post(url).body("img").send().await });
    gw.wait_held(&key, 1).await;
    assert_eq!(gw.wakes.recv().await, Some(WakeRequest { key: key.clone(), held: 1, wake: true }));
    assert_eq!(gw.metric("ocellus_gateway_held_requests"), Some(1.0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "answered while no pod was ready");

    let up = upstream("late", Duration::ZERO).await;
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let r = pending.await.expect("join").expect("response");
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.expect("json");
    assert_eq!(echo["tag"], "late");
    assert_eq!(echo["body"], json!(b"img".to_vec()));
    assert_eq!(gw.gateway.index().held(&key), 0);
    assert_eq!(gw.metric("ocellus_gateway_held_requests"), Some(0.0));
    assert_eq!(gw.metric("ocellus_gateway_held_seconds_count"), Some(1.0));
    let held_for = gw.metric("ocellus_gateway_held_seconds_sum").expect("sum");
    assert!(held_for >= 0.2, "held {held_for} s");
}

#[tokio::test]
async fn refuses_past_the_queue_bound_with_429() {
    let gw = start(GatewayConfig { max_held: 2, ..fast() }).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    let client = reqwest::Client::new();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/team-a/det/v2/models/det/infer"));
            tokio::spawn(async move { client.post(url).body("{}").send().await })
        })
        .collect();
    gw.wait_held(&key, 2).await;
    let r = client.post(gw.url("/team-a/det/v2/models/det/infer")).body("{}").send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let e: Value = r.json().await.expect("json");
    assert_eq!(
        e["error"],
        "model deployment team-a/det has no ready predictor pod and 2 requests are already waiting for one; retry later"
    );
    let up = upstream("a", Duration::ZERO).await;
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    for h in held {
        assert_eq!(h.await.expect("join").expect("response").status(), 200, "held requests are never dropped");
    }
    assert_eq!(gw.metric("ocellus_gateway_requests_total{code_class=\"4xx\"}"), Some(1.0));
}

#[tokio::test]
async fn hold_timeout_gives_503() {
    let gw = start(GatewayConfig { hold_timeout: Duration::from_millis(300), ..fast() }).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    let start = Instant::now();
    let r = reqwest::Client::new().post(gw.url("/team-a/det/predict")).body("x").send().await.expect("send");
    assert!(start.elapsed() >= Duration::from_millis(300), "answered after {:?}", start.elapsed());
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"], "model deployment team-a/det had no ready predictor pod within 0.3 s");
    assert_eq!(gw.gateway.index().held(&key), 0);
}

#[tokio::test]
async fn a_client_that_goes_away_releases_its_place() {
    let gw = start(GatewayConfig { max_held: 1, ..fast() }).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client");
    for (method, body) in [("GET", ""), ("POST", "with a body")] {
        let req = impatient.request(method.parse().expect("method"), gw.url("/team-a/det/predict")).body(body);
        let sent = tokio::spawn(req.send());
        gw.wait_held(&key, 1).await;
        assert_eq!(gw.metric("ocellus_gateway_held_requests"), Some(1.0));
        let err = sent.await.expect("join").expect_err("timed out");
        assert!(err.is_timeout(), "{err}");
        gw.wait_held(&key, 0).await;
        assert_eq!(gw.metric("ocellus_gateway_held_requests"), Some(0.0), "{method}");
    }
    // The freed place is usable: the bound is 1 and a new request is held, not refused.
    let url = gw.url("/team-a/det/predict");
    let next = tokio::spawn(async move { reqwest::Client::new().get(url).send().await });
    gw.wait_held(&key, 1).await;
    let up = upstream("a", Duration::ZERO).await;
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    assert_eq!(next.await.expect("join").expect("response").status(), 200);
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_pod() {
    let gw = start(fast()).await;
    let dead = closed_port().await;
    let live = upstream("live", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    // The dead pod first: the first request tries it (ties go in order).
    gw.gateway.index().set_endpoints(&key, [dead, live.addr]);
    let client = reqwest::Client::new();
    for i in 0..4 {
        let r = client.post(gw.url("/team-a/det/predict")).body(format!("req {i}")).send().await.expect("send");
        assert_eq!(r.status(), 200);
        let echo: Value = r.json().await.expect("json");
        assert_eq!(echo["body"], json!(format!("req {i}").into_bytes()), "the body is sent again intact");
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 4);
    // Ejected after one refusal: not tried again within the ejection time.
    assert_eq!(gw.metric("ocellus_gateway_upstream_errors_total{kind=\"connect\"}"), Some(1.0));
}

#[tokio::test]
async fn a_refused_connection_with_no_other_pod_is_held_until_one_is_ready() {
    let gw = start(fast()).await;
    let dead = closed_port().await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [dead]);
    let url = gw.url("/team-a/det/predict");
    let pending = tokio::spawn(async move { reqwest::Client::new().post(url).body("x").send().await });
    gw.wait_held(&key, 1).await;
    let live = upstream("live", Duration::ZERO).await;
    gw.gateway.index().set_endpoints(&key, [dead, live.addr]);
    let r = pending.await.expect("join").expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(live.hits.load(Ordering::SeqCst), 1);
    assert_eq!(gw.gateway.index().held(&key), 0);
}

#[tokio::test]
async fn a_pod_dying_mid_request_gives_503_and_no_retry() {
    let gw = start(fast()).await;
    let (crash, seen) = crashing_upstream().await;
    let live = upstream("live", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [crash, live.addr]);
    let r = reqwest::Client::new().post(gw.url("/team-a/det/predict")).body("x").send().await.expect("send");
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.expect("json");
    assert_eq!(
        e["error"],
        "the predictor pod of model deployment team-a/det failed while handling the request; it was not retried because it may have been processed"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(live.hits.load(Ordering::SeqCst), 0, "a request that reached a pod is not sent again");
    assert_eq!(gw.metric("ocellus_gateway_upstream_errors_total{kind=\"in_flight\"}"), Some(1.0));
    assert_eq!(gw.gateway.index().endpoints(&key), vec![(crash, 0), (live.addr, 0)]);
}

#[tokio::test]
async fn label_studio_health_and_setup_are_answered_at_zero() {
    let mut gw = start(fast()).await;
    let key = gw.deploy("det", Lifecycle::Active, Some("0123456789ab"));
    let client = reqwest::Client::new();
    let start = Instant::now();
    let r = client.get(gw.url("/team-a/det/health")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"status": "UP", "model_class": "OcellusYOLO", "model_version": "det-0123456789ab"}),
        "what the pod itself answers: <OCELLUS_MODEL_NAME = deployment name>-<status.modelVersion>"
    );
    let r = client
        .post(gw.url("/team-a/det/setup"))
        .json(&json!({"project": "1.1700000000", "schema": "<View/>", "hostname": "http://ls", "access_token": "t"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"model_version": "det-0123456789ab"}));
    assert!(start.elapsed() < Duration::from_secs(1), "within Label Studio's 1 s");
    // Both asked for a wake; the second fell within the wake interval.
    assert_eq!(gw.wakes.recv().await, Some(WakeRequest { key: key.clone(), held: 0, wake: true }));
    assert!(gw.wakes.try_recv().is_err(), "rate-limited");
    assert_eq!(gw.gateway.index().held(&key), 0, "not held");

    // No version in the status yet: null, as the SDK reports an unknown version.
    gw.deploy("fresh", Lifecycle::Active, None);
    let r = client.get(gw.url("/team-a/fresh/health")).send().await.expect("send");
    assert_eq!(r.json::<Value>().await.expect("json")["model_version"], Value::Null);

    // With a ready pod everything goes to it.
    let up = upstream("pod", Duration::ZERO).await;
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let echo: Value = client.get(gw.url("/team-a/det/health")).send().await.expect("send").json().await.expect("json");
    assert_eq!(echo["tag"], "pod");
    assert_eq!(echo["path"], "/health");
}

#[tokio::test]
async fn unknown_stopped_expired_and_reserved_are_refused_at_once() {
    let mut gw = start(fast()).await;
    let client = reqwest::Client::new();
    let r = client.get(gw.url("/team-a/missing/predict")).send().await.expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"error": "model deployment team-a/missing not found"}));

    // Endpoints alone (a Service of the same name) do not make a deployment.
    gw.gateway.index().set_endpoints(&DeploymentKey::new("team-a", "svc"), [closed_port().await]);
    assert_eq!(client.get(gw.url("/team-a/svc/predict")).send().await.expect("send").status(), 404);

    let up = upstream("a", Duration::ZERO).await;
    for (name, lifecycle, msg) in [
        (
            "stopped",
            Lifecycle::Stopped,
            "model deployment team-a/stopped is stopped (spec.stopped: true); set spec.stopped to false to serve it again",
        ),
        ("expired", Lifecycle::Expired, "model deployment team-a/expired has expired (spec.durationHours has passed)"),
    ] {
        let key = gw.deploy(name, lifecycle, Some("v"));
        gw.gateway.index().set_endpoints(&key, [up.addr]);
        for path in ["predict", "health"] {
            let start = Instant::now();
            let r = client.get(gw.url(&format!("/team-a/{name}/{path}"))).send().await.expect("send");
            assert!(start.elapsed() < Duration::from_secs(1));
            assert_eq!(r.status(), 503);
            assert_eq!(r.json::<Value>().await.expect("json"), json!({"error": msg}));
        }
    }
    let key = gw.deploy("failed", Lifecycle::Failed, None);
    let r = client.get(gw.url("/team-a/failed/predict")).send().await.expect("send");
    assert_eq!(r.status(), 503);
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let r = client.get(gw.url("/team-a/failed/predict")).send().await.expect("send");
    assert_eq!(r.status(), 200, "a failed deployment's ready pod still serves");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    assert!(gw.wakes.try_recv().is_err(), "nothing woken");

    // `api` is not a namespace the gateway serves.
    let key = DeploymentKey::new("api", "x");
    gw.gateway.index().set_deployment(&key, Some(DeploymentInfo { lifecycle: Lifecycle::Active, model_version: None }));
    let r = client.get(gw.url("/api/x/predict")).send().await.expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"error": "no route for /api/x/predict"}));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gw = start(GatewayConfig { max_body_bytes: 1024, ..fast() }).await;
    let up = upstream("a", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, None);
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let client = reqwest::Client::new();
    let r = client.post(gw.url("/team-a/det/predict")).body(vec![0u8; 1025]).send().await.expect("send");
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"error": "the request body exceeds the gateway's limit of 1024 bytes"})
    );
    // Chunked, without a length: counted while read.
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /team-a/det/predict HTTP/1.1\r\nHost: g\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let (status, _, _) = raw(&gw.base, req.as_bytes()).await;
    assert_eq!(status, 413);
    let r = client.post(gw.url("/team-a/det/predict")).body(vec![0u8; 1024]).send().await.expect("send");
    assert_eq!(r.status(), 200, "exactly the limit passes");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_wait_for_the_first_listing() {
    let registry = prometheus::Registry::new();
    let (gateway, _wakes) =
        Gateway::new(GatewayConfig { hold_timeout: Duration::from_millis(300), ..fast() }, &registry).expect("gateway");
    let health = Health::new(registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = app(AppState { health, gateway: gateway.clone() });
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/team-a/det/predict")).send().await.expect("send");
    assert_eq!(r.status(), 503, "not listed within the hold timeout");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"error": "the gateway has not listed model deployments yet; retry shortly"})
    );
    // Listed while the request waits: it proceeds as if listed from the start.
    let up = upstream("a", Duration::ZERO).await;
    let pending = tokio::spawn(client.get(format!("{base}/team-a/det/predict")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = DeploymentKey::new("team-a", "det");
    gateway.index().set_deployment(&key, Some(DeploymentInfo { lifecycle: Lifecycle::Active, model_version: None }));
    gateway.index().set_endpoints(&key, [up.addr]);
    gateway.index().mark_synced();
    assert_eq!(pending.await.expect("join").expect("response").status(), 200);
}

#[tokio::test]
async fn with_keys_only_the_namespace_s_key_passes_and_the_pod_never_sees_it() {
    use ocellus_apiserver::api::keys::{KeyIndex, KeyRecord, Keys, PlaintextKey, Role};
    let gw = start(fast()).await;
    let up = upstream("a", Duration::ZERO).await;
    let key = gw.deploy("det", Lifecycle::Active, Some("0123456789ab"));
    gw.gateway.index().set_endpoints(&key, [up.addr]);
    let ours = PlaintextKey::from_bytes([7; 20]);
    let theirs = PlaintextKey::from_bytes([9; 20]);
    let now = chrono::Utc::now();
    gw.gateway.require_keys(Keys::from_index(KeyIndex::from_records([
        KeyRecord::new(&ours, "team-a", Role::Viewer, "ours", now),
        KeyRecord::new(&theirs, "team-b", Role::Admin, "theirs", now),
    ])));
    let http = reqwest::Client::new();
    let url = gw.url("/team-a/det/v2/models/m?x=1");

    let none = http.get(&url).send().await.expect("send");
    assert_eq!(none.status(), 401);
    assert!(none.text().await.expect("body").contains("\"error\""));
    let forged = PlaintextKey::from_bytes([8; 20]);
    assert_eq!(http.get(&url).bearer_auth(forged.expose()).send().await.expect("send").status(), 401);
    let other = http.get(&url).bearer_auth(theirs.expose()).send().await.expect("send");
    assert_eq!(other.status(), 403, "a team-b admin key reached team-a");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "a refused request reached the pod");

    // A viewer key may predict; the header form and the query form both work, and both are
    // removed before the pod sees the request.
    let echo: Value = http.get(&url).bearer_auth(ours.expose()).send().await.expect("send").json().await.expect("json");
    assert!(echo["headers"].get("authorization").is_none(), "the key reached the pod: {echo}");
    assert_eq!(echo["query"], "x=1");
    let q = gw.url(&format!("/team-a/det/v2/models/m?api_key={}&x=1", ours.expose()));
    let echo: Value = http.get(&q).send().await.expect("send").json().await.expect("json");
    assert_eq!(echo["query"], "x=1", "the api_key parameter reached the pod");
    let only = gw.url(&format!("/team-a/det/health?api_key={}", ours.expose()));
    let echo: Value = http.get(&only).send().await.expect("send").json().await.expect("json");
    assert_eq!(echo["query"], Value::Null);
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);

    // Roboflow's inference SDK: the key in a JSON body, taken out before the pod sees it.
    let infer = gw.url("/team-a/det/infer/object_detection");
    let body = json!({"api_key": ours.expose(), "model_id": "det/1", "image": {"type": "base64", "value": "AAAA"}});
    let echo: Value = http.post(&infer).json(&body).send().await.expect("send").json().await.expect("json");
    let forwarded: Value =
        serde_json::from_slice(&serde_json::from_value::<Vec<u8>>(echo["body"].clone()).expect("bytes")).expect("json");
    assert_eq!(forwarded, json!({"model_id": "det/1", "image": {"type": "base64", "value": "AAAA"}}));
    assert!(echo["headers"].get("authorization").is_none(), "the key reached the pod: {echo}");
    let theirs_in_body = json!({"api_key": theirs.expose(), "model_id": "det/1"});
    assert_eq!(http.post(&infer).json(&theirs_in_body).send().await.expect("send").status(), 403);
    assert_eq!(http.post(&infer).json(&json!({"model_id": "det/1"})).send().await.expect("send").status(), 401);
    // A header decides; the body's key is taken out all the same.
    let echo: Value = http
        .post(&infer)
        .bearer_auth(ours.expose())
        .json(&theirs_in_body)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let forwarded: Value =
        serde_json::from_slice(&serde_json::from_value::<Vec<u8>>(echo["body"].clone()).expect("bytes")).expect("json");
    assert_eq!(forwarded, json!({"model_id": "det/1"}), "the body's key is taken out all the same");
    assert_eq!(up.hits.load(Ordering::SeqCst), 5);
}
