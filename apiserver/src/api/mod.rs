//! The shared ground of the REST APIs: API keys, authentication, rate limits, the error type,
//! the OpenAPI document and request metrics, one place each.
//!
//! - [`keys`]: the `ul_` key format, the hashed record and its Secret, roles, the key index;
//! - [`auth`]: the [`Principal`] of a request, from the key in any client's native form;
//! - [`ratelimit`]: per-key, per-category token buckets and the `X-RateLimit-*` headers;
//! - [`error`]: [`ApiError`], rendered in each surface's error shape ([`Flavor`]);
//! - [`secrets`]: the Kubernetes writes of keys behind [`SecretWriter`];
//! - [`keys_router`]: `/api/api-keys`; [`bootstrap`]: the chart's admin key;
//! - [`openapi`]: `/openapi.json`; [`metrics`]: request metrics by route template.
//!
//! A new REST router: write handlers that take [`Principal`] (and check
//! [`Principal::require`]) and return `Result<_, ApiError>`, wrap the router with
//! [`ApiState::protect`] (authentication, then rate limits) and merge it in
//! [`ApiState::router`]; add each handler to [`openapi::ApiDoc`]. Reads come from reflector
//! caches, writes go through the Kubernetes API with field manager [`keys::FIELD_MANAGER`].

pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod keys;
pub mod keys_router;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod secrets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::from_fn_with_state;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;

pub use auth::Principal;
pub use error::{ApiError, ApiJson, Flavor, Surface, SurfaceError, SurfaceJson};
pub use keys::{Action, KeyIndex, Keys, Role};
pub use metrics::ApiMetrics;
pub use ratelimit::{Category, Limits, RateLimiter};
pub use secrets::{KubeSecrets, MemorySecrets, SecretWriter};

/// Everything the REST routers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The live API keys.
    pub keys: Keys,
    /// Writes key Secrets.
    pub writer: Arc<dyn SecretWriter>,
    /// The release namespace (where key Secrets live).
    pub release_namespace: String,
    /// The per-key rate limiter, shared by every surface.
    pub limiter: RateLimiter,
    /// Request metrics.
    pub metrics: ApiMetrics,
    /// Set once the bootstrap key is registered (or there is none to register).
    pub bootstrapped: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiState {
    /// The state, its metrics registered in `registry`.
    pub fn new(
        keys: Keys,
        writer: Arc<dyn SecretWriter>,
        release_namespace: String,
        limiter: RateLimiter,
        registry: &prometheus::Registry,
    ) -> Result<ApiState, prometheus::Error> {
        Ok(ApiState {
            keys,
            writer,
            release_namespace,
            limiter,
            metrics: ApiMetrics::register(registry)?,
            bootstrapped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Whether keys can be checked: the key Secrets have been listed once and the bootstrap key
    /// is registered. Until then a valid key could be refused, so the replica is not ready.
    pub fn is_ready(&self) -> bool {
        self.keys.is_synced() && self.bootstrapped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `router` behind authentication then rate limiting (as route layers: only matched routes
    /// are guarded, so unknown paths stay 404), refusals rendered in `flavor`.
    pub fn protect(&self, router: Router, flavor: Flavor) -> Router {
        router
            .route_layer(from_fn_with_state(
                ratelimit::RateLimitLayer { limiter: self.limiter.clone(), flavor },
                ratelimit::rate_limit,
            ))
            .route_layer(from_fn_with_state(auth::AuthLayer { keys: self.keys.clone(), flavor }, auth::require_auth))
    }

    /// Every REST route: `/api/api-keys` (protected) and `/openapi.json` (public), with request
    /// metrics. Merge it next to the health routes and the gateway (see [`crate::app_with_api`]).
    pub fn router(&self) -> Router {
        self.router_with(Router::new())
    }

    /// [`ApiState::router`] with `protected`: more REST routes, already behind
    /// [`ApiState::protect`], counted by the same request metrics.
    pub fn router_with(&self, protected: Router) -> Router {
        let keys = keys_router::routes(keys_router::KeysApi {
            keys: self.keys.clone(),
            writer: self.writer.clone(),
            release_namespace: self.release_namespace.clone(),
        });
        Router::new()
            .merge(self.protect(keys, Flavor::Ultralytics))
            .merge(protected)
            .merge(openapi::routes())
            .layer(from_fn_with_state(self.metrics.clone(), metrics::track))
    }
}

/// Command-line and environment configuration of the REST APIs (flatten into the binary's).
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// Namespace holding the API key Secrets: the release namespace (the chart sets it).
    #[arg(long = "keys-namespace", env = "OCELLUS_KEYS_NAMESPACE", default_value = "default")]
    pub keys_namespace: String,
    /// File holding the bootstrap admin key (`ul_` + 40 hex), e.g. the chart's Secret mounted as
    /// a volume. Without it, no bootstrap key exists (an earlier one is removed).
    #[arg(long = "bootstrap-api-key-file", env = "OCELLUS_BOOTSTRAP_API_KEY_FILE", conflicts_with = "bootstrap_key")]
    pub bootstrap_key_file: Option<PathBuf>,
    /// The bootstrap admin key itself, from the environment (the chart sets it from its Secret
    /// with `secretKeyRef`); never shown by `--help`. Prefer `--bootstrap-api-key-file` where
    /// Secrets can be mounted.
    #[arg(long = "bootstrap-api-key", env = "OCELLUS_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_key: Option<String>,
    /// Namespace (workspace) the bootstrap admin key acts in.
    #[arg(
        long = "bootstrap-api-key-namespace",
        env = "OCELLUS_BOOTSTRAP_API_KEY_NAMESPACE",
        default_value = "default"
    )]
    pub bootstrap_namespace: String,
    /// Overrides of the per-minute rate limits, e.g. `default=200,predict=unlimited`
    /// (categories: default, training, upload, predict, export, download).
    #[arg(long = "api-rate-limits", env = "OCELLUS_API_RATE_LIMITS", default_value = "", value_parser = Limits::with_overrides)]
    pub rate_limits: Limits,
    /// Bucket holding datasets, checkpoints and artifacts (uploads go there).
    #[arg(long = "s3-bucket", env = "OCELLUS_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint that API clients reach, when it is not the apiserver's own (`OCELLUS_S3_ENDPOINT`,
    /// often an in-cluster Service): presigned upload URLs name it.
    #[arg(long = "s3-public-endpoint", env = "OCELLUS_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    /// Most rate-limit buckets kept in memory (one per active key and category).
    #[arg(long = "api-rate-limit-max-buckets", env = "OCELLUS_API_RATE_LIMIT_MAX_BUCKETS", default_value_t = ratelimit::DEFAULT_MAX_BUCKETS)]
    pub max_buckets: usize,
}

/// Why the REST APIs could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bootstrap key file or namespace is unusable.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// The metrics could not be registered.
    #[error("registering the REST API metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Starts the REST APIs against the cluster: reads the bootstrap key file (a bad one fails
/// here, at start), and spawns the key Secret watch and the bootstrap (retried until the API
/// server accepts it). Returns at once; until the watch has listed, requests with keys this
/// replica did not write get 503. Needs a Tokio runtime.
pub fn start(
    client: Client,
    args: &ApiArgs,
    registry: &prometheus::Registry,
) -> Result<(ApiState, Vec<JoinHandle<()>>), StartError> {
    let bootstrap_key = match (&args.bootstrap_key, &args.bootstrap_key_file) {
        (Some(k), _) => Some(
            keys::PlaintextKey::parse(k.trim())
                .map_err(|_| bootstrap::BootstrapError::Malformed { path: "$OCELLUS_BOOTSTRAP_API_KEY".into() })?,
        ),
        (None, f) => f.as_deref().map(bootstrap::read_key_file).transpose()?,
    };
    if !keys::is_namespace_name(&args.bootstrap_namespace) {
        return Err(bootstrap::BootstrapError::Namespace(args.bootstrap_namespace.clone()).into());
    }
    let keys = Keys::new();
    let writer: Arc<dyn SecretWriter> = Arc::new(KubeSecrets::new(client.clone(), &args.keys_namespace));
    let limiter = RateLimiter::new(args.rate_limits.clone(), args.max_buckets);
    let state = ApiState::new(keys.clone(), writer.clone(), args.keys_namespace.clone(), limiter, registry)?;
    let watch = spawn_key_watch(client, &args.keys_namespace, keys.clone());
    let (release_ns, boot_ns) = (args.keys_namespace.clone(), args.bootstrap_namespace.clone());
    let bootstrapped = state.bootstrapped.clone();
    let boot = tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            match bootstrap::ensure(writer.as_ref(), &keys, &release_ns, bootstrap_key.as_ref(), &boot_ns).await {
                Ok(_) => {
                    bootstrapped.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                Err(bootstrap::BootstrapError::Write(e)) => {
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "bootstrap API key: retrying");
                }
                Err(e) => {
                    // Retrying cannot help: serve the other keys, and say why this one fails.
                    tracing::error!(error = %e, "bootstrap API key not registered");
                    bootstrapped.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    });
    Ok((state, vec![watch, boot]))
}

/// Watches the key Secrets of `namespace` (label `ocellus.dev/api-key=true`) into a reflector
/// store and installs a fresh [`KeyIndex`] of it in `keys` after each listing and each change,
/// so that requests never list Secrets. Runs until aborted.
pub fn spawn_key_watch(client: Client, namespace: &str, keys: Keys) -> JoinHandle<()> {
    let (store, writer) = reflector::store::<Secret>();
    let api = Api::<Secret>::namespaced(client, namespace);
    let stream = watcher(api, watcher::Config::default().labels(keys::KEY_SELECTOR)).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // A (re-)listing is applied whole, at its end.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    keys.replace(KeyIndex::from_secrets(store.state()), Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "API key Secret watch failed; retrying"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use chrono::{DateTime, Utc};
    use tower::ServiceExt;

    use super::keys::{KeyRecord, PlaintextKey};
    use super::ratelimit::{LIMIT_HEADER, ManualClock, REMAINING_HEADER, RESET_HEADER};
    use super::*;

    fn state_with(
        limits: Limits,
        clock: Arc<ManualClock>,
        registry: &prometheus::Registry,
    ) -> (ApiState, PlaintextKey) {
        let admin = PlaintextKey::from_bytes([1; 20]);
        let keys = Keys::from_index(KeyIndex::from_records([KeyRecord::new(
            &admin,
            "team-a",
            Role::Admin,
            "admin",
            Utc::now(),
        )]));
        let limiter = RateLimiter::with_clock(limits, 100, clock);
        let state =
            ApiState::new(keys, Arc::new(MemorySecrets::new()), "rel".into(), limiter, registry).expect("state");
        (state, admin)
    }

    fn get(uri: &str, key: &PlaintextKey) -> Request<Body> {
        Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", key.expose()))
            .body(Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn exhaustion_is_a_429_with_headers_and_time_refills() {
        let wall = DateTime::parse_from_rfc3339("2026-02-21T12:34:00Z").expect("t").with_timezone(&Utc);
        let clock = Arc::new(ManualClock::new(wall));
        let limits = Limits::with_overrides("default=2").expect("limits");
        let (state, admin) = state_with(limits, clock.clone(), &prometheus::Registry::new());
        let router = state.router();
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[LIMIT_HEADER], "2");
        assert_eq!(r.headers()[REMAINING_HEADER], "1");
        assert_eq!(r.headers()[RESET_HEADER], "2026-02-21T12:34:30.000Z", "full again in 60 s / 2");
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[REMAINING_HEADER], "0");
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        assert_eq!(r.headers()[REMAINING_HEADER], "0");
        assert_eq!(r.headers()[LIMIT_HEADER], "2");
        assert_eq!(r.headers()[RESET_HEADER], "2026-02-21T12:35:00.000Z");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["code"], "RATE_LIMITED");
        clock.advance(Duration::from_secs(29));
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        clock.advance(Duration::from_secs(1));
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK, "one request refilled after 30 s");
        // The OpenAPI document is public and not rate limited.
        let r = router.clone().oneshot(Request::get("/openapi.json").body(Body::empty()).expect("req")).await;
        let r = r.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get(LIMIT_HEADER).is_none());
    }

    #[tokio::test]
    async fn protected_routes_get_their_category_and_the_principal() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (state, admin) = state_with(Limits::default(), clock, &prometheus::Registry::new());
        let routes = Router::new().route(
            "/api/models/{modelId}/predict",
            axum::routing::post(|p: Principal| async move { format!("{} {}", p.namespace, p.role) }),
        );
        let router = state.protect(routes, Flavor::Ultralytics);
        let req = Request::post("/api/models/m1/predict")
            .header(header::AUTHORIZATION, format!("Token {}", admin.expose()))
            .body(Body::empty())
            .expect("req");
        let r = router.clone().oneshot(req).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[LIMIT_HEADER], "20", "the predict category, from the route template");
        assert_eq!(r.headers()[REMAINING_HEADER], "19");
        let body = axum::body::to_bytes(r.into_body(), 1 << 10).await.expect("body");
        assert_eq!(&body[..], b"team-a admin");
    }

    #[tokio::test]
    async fn unauthenticated_requests_spend_no_budget() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (state, admin) =
            state_with(Limits::with_overrides("default=1").expect("l"), clock, &prometheus::Registry::new());
        let router = state.router();
        for _ in 0..3 {
            let r = router.clone().oneshot(Request::get("/api/api-keys").body(Body::empty()).expect("req")).await;
            let r = r.expect("call");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert!(r.headers().get(LIMIT_HEADER).is_none());
        }
        let r = router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_status_class() {
        let registry = prometheus::Registry::new();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (state, admin) = state_with(Limits::default(), clock, &registry);
        let router = state.router();
        router.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        router.clone().oneshot(get("/api/api-keys/0000abcd", &admin)).await.expect("call");
        let del = Request::delete("/api/api-keys/0000abcd")
            .header(header::AUTHORIZATION, format!("Bearer {}", admin.expose()))
            .body(Body::empty())
            .expect("req");
        router.clone().oneshot(del).await.expect("call");
        router.clone().oneshot(Request::get("/api/api-keys").body(Body::empty()).expect("req")).await.expect("call");
        let text = ocellus_common::render_metrics(&registry).expect("metrics");
        for line in [
            r#"ocellus_api_requests_total{code_class="2xx",method="GET",route="/api/api-keys"} 1"#,
            r#"ocellus_api_requests_total{code_class="4xx",method="GET",route="/api/api-keys"} 1"#,
            r#"ocellus_api_requests_total{code_class="4xx",method="DELETE",route="/api/api-keys/{keyId}"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains("0000abcd"), "no concrete paths in labels");
    }

    #[tokio::test]
    async fn the_api_routes_live_beside_the_gateway() {
        let registry = prometheus::Registry::new();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (api, admin) = state_with(Limits::default(), clock, &registry);
        let (gateway, _wakes) =
            crate::Gateway::new(crate::gateway::GatewayConfig::default(), &registry).expect("gateway");
        gateway.index().mark_synced();
        let health = ocellus_common::Health::new(registry);
        let app = crate::app_with_api(crate::AppState { health, gateway }, api);
        let r = app.clone().oneshot(get("/api/api-keys", &admin)).await.expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        let r = app.clone().oneshot(Request::get("/openapi.json").body(Body::empty()).expect("r")).await;
        assert_eq!(r.expect("call").status(), StatusCode::OK);
        let r = app.clone().oneshot(Request::get("/healthz").body(Body::empty()).expect("r")).await;
        assert_eq!(r.expect("call").status(), StatusCode::OK);
        // A gateway path still reaches the gateway (its own 404 for an unknown deployment).
        let r = app.clone().oneshot(Request::get("/team-a/model/predict").body(Body::empty()).expect("r")).await;
        let r = r.expect("call");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("not found"), "{body:?}");
    }
}
