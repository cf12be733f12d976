//! Rate limits per API key and category, as the Ultralytics Platform reference's table says.
//!
//! | Category | Limit | Routes |
//! | --- | --- | --- |
//! | `default` | 100/min | every `/api/...` route not below |
//! | `training` | 10/min | `POST /api/training/start` |
//! | `upload` | 10/min | `POST /api/upload/signed-url`, `POST /api/upload/complete`, `POST /api/datasets/ingest` |
//! | `predict` | 20/min | `POST /api/models/{id}/predict` |
//! | `export` | 20/min | `POST /api/exports`, `GET`/`POST /api/datasets/{id}/export` (NDJSON exports, version creation) |
//! | `download` | 30/min | `GET /api/models/{id}/download` |
//! | `dedicated` | unlimited | everything outside `/api/` (the serving gateway: "dedicated endpoints") |
//!
//! Each category has its own budget per key ([`Category::for_route`] is the one place routes
//! are classified). The reference counts in a sliding window; this is a token bucket of the
//! same size refilled continuously (GCRA, integer arithmetic on [`Instant`]s): a full budget as
//! a burst, then one request per `60 s / limit`. Buckets live in memory, per replica.
//!
//! Headers on every limited response: `X-RateLimit-Limit` (requests per minute),
//! `X-RateLimit-Remaining` (requests left now) and `X-RateLimit-Reset` (when the budget is full
//! again, as the reference writes it: `2026-02-21T12:34:56.000Z`); a refused request gets 429,
//! `Retry-After` (whole seconds until the next request is allowed) and the same headers.
//!
//! Memory is bounded: a bucket that has refilled completely is indistinguishable from a new one
//! and is dropped by a sweep once a minute, and a hard cap evicts the fullest buckets first.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::auth::Principal;
use super::error::{ApiError, Flavor};
use super::keys::KeyId;

/// `X-RateLimit-Limit`: the category's requests per minute.
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: requests the key may still make at once.
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: when the budget is full again (ISO 8601 UTC with milliseconds).
pub const RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The window every limit is expressed in.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Default bound on buckets held in memory (each ~100 bytes).
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

/// A rate-limit category of the reference's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// List, get, create, update, delete: 100/min.
    Default,
    /// Starting training: 10/min.
    Training,
    /// Uploads, signed upload URLs, dataset ingest: 10/min.
    Upload,
    /// Shared model inference: 20/min.
    Predict,
    /// Model and dataset exports, version creation: 20/min.
    Export,
    /// Model weight downloads: 30/min.
    Download,
    /// Dedicated endpoints (the serving gateway): unlimited.
    Dedicated,
}

/// `(method, route template with parameters as {})` → category; everything else under
/// `/api/` is [`Category::Default`].
const ROUTES: &[(&str, &str, Category)] = &[
    ("POST", "/api/training/start", Category::Training),
    ("POST", "/api/upload/signed-url", Category::Upload),
    ("POST", "/api/upload/complete", Category::Upload),
    ("POST", "/api/datasets/ingest", Category::Upload),
    ("POST", "/api/datasets/{}/{}/ingest", Category::Upload),
    ("POST", "/api/models/{}/predict", Category::Predict),
    ("POST", "/api/deployments/{}/{}/predict", Category::Predict),
    ("POST", "/api/models/{}/{}/{}/predict", Category::Predict),
    ("POST", "/api/exports", Category::Export),
    ("POST", "/api/models/{}/{}/{}/exports", Category::Export),
    ("GET", "/api/datasets/{}/export", Category::Export),
    ("POST", "/api/datasets/{}/export", Category::Export),
    ("GET", "/api/models/{}/download", Category::Download),
    ("GET", "/api/models/{}/{}/{}/files", Category::Download),
];

impl Category {
    /// Every category.
    pub const ALL: [Category; 7] = [
        Category::Default,
        Category::Training,
        Category::Upload,
        Category::Predict,
        Category::Export,
        Category::Download,
        Category::Dedicated,
    ];

    /// Lowercase name (`default`, `training`, ...), as in `--api-rate-limits`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Default => "default",
            Category::Training => "training",
            Category::Upload => "upload",
            Category::Predict => "predict",
            Category::Export => "export",
            Category::Download => "download",
            Category::Dedicated => "dedicated",
        }
    }

    /// The category of a request to the route `template` (axum's `MatchedPath`, e.g.
    /// `/api/models/{modelId}/predict`; parameter names do not matter).
    pub fn for_route(method: &Method, template: &str) -> Category {
        if !template.starts_with("/api/") {
            return Category::Dedicated;
        }
        let normalized: Vec<&str> = template
            .split('/')
            .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "{}" } else { seg })
            .collect();
        let normalized = normalized.join("/");
        ROUTES
            .iter()
            .find(|(m, t, _)| *m == method.as_str() && *t == normalized)
            .map_or(Category::Default, |(_, _, c)| *c)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Requests per minute of each category; a category without an entry is unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    per_minute: HashMap<Category, u32>,
}

impl Default for Limits {
    /// The reference's table.
    fn default() -> Self {
        Limits {
            per_minute: HashMap::from([
                (Category::Default, 100),
                (Category::Training, 10),
                (Category::Upload, 10),
                (Category::Predict, 20),
                (Category::Export, 20),
                (Category::Download, 30),
            ]),
        }
    }
}

/// A malformed `--api-rate-limits` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate limit {0:?}: expected CATEGORY=N (N >= 1 per minute) or CATEGORY=unlimited, categories default, training, upload, predict, export, download"
)]
pub struct InvalidLimits(String);

impl Limits {
    /// The limit of `category` per minute; `None` is unlimited.
    pub fn get(&self, category: Category) -> Option<u32> {
        if category == Category::Dedicated { None } else { self.per_minute.get(&category).copied() }
    }

    /// Sets one limit (`None`: unlimited).
    pub fn set(&mut self, category: Category, per_minute: Option<u32>) {
        match per_minute {
            Some(n) if n > 0 && category != Category::Dedicated => {
                self.per_minute.insert(category, n);
            }
            _ => {
                self.per_minute.remove(&category);
            }
        }
    }

    /// The reference's table with overrides, `default=200,predict=unlimited`.
    pub fn with_overrides(spec: &str) -> Result<Limits, InvalidLimits> {
        let mut limits = Limits::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || InvalidLimits(entry.to_string());
            let (name, value) = entry.split_once('=').ok_or_else(bad)?;
            let category = Category::ALL
                .into_iter()
                .find(|c| c.as_str() == name.trim() && *c != Category::Dedicated)
                .ok_or_else(bad)?;
            let value = value.trim();
            let n = if value == "unlimited" {
                None
            } else {
                Some(value.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad)?)
            };
            limits.set(category, n);
        }
        Ok(limits)
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The category's limit per minute.
    pub limit: u32,
    /// Requests the key may still make at once, after this one.
    pub remaining: u32,
    /// How long until the budget is full again.
    pub reset_after: Duration,
    /// `Some` when refused: how long until one more request is allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// The pure core: one bucket per (key, category), as a theoretical arrival time (GCRA). The
/// clock is the caller's: every call takes `now`.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    /// When each bucket will be full again; at or before `now` it is full.
    buckets: HashMap<(KeyId, Category), Instant>,
    max_buckets: usize,
    last_sweep: Option<Instant>,
}

impl Limiter {
    /// A limiter with `limits`, holding at most `max_buckets` buckets.
    pub fn new(limits: Limits, max_buckets: usize) -> Limiter {
        Limiter { limits, buckets: HashMap::new(), max_buckets: max_buckets.max(1), last_sweep: None }
    }

    /// Counts one request of `key` in `category` at `now`; `None` when the category is unlimited.
    pub fn check(&mut self, key: &KeyId, category: Category, now: Instant) -> Option<Decision> {
        let limit = self.limits.get(category)?;
        let interval = Duration::from_nanos((PERIOD.as_nanos() / u128::from(limit)) as u64);
        self.sweep(now);
        let bucket = (key.clone(), category);
        let tat = self.buckets.get(&bucket).copied().filter(|t| *t > now).unwrap_or(now);
        let next = tat + interval;
        let used = next - now;
        if used > PERIOD {
            return Some(Decision { limit, remaining: 0, reset_after: tat - now, retry_after: Some(used - PERIOD) });
        }
        if !self.buckets.contains_key(&bucket) && self.buckets.len() >= self.max_buckets {
            self.evict_fullest();
        }
        self.buckets.insert(bucket, next);
        let remaining = ((PERIOD - used).as_nanos() / interval.as_nanos()) as u32;
        Some(Decision { limit, remaining, reset_after: used, retry_after: None })
    }

    /// Drops full buckets once per [`PERIOD`].
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < PERIOD) {
            return;
        }
        self.last_sweep = Some(now);
        self.buckets.retain(|_, tat| *tat > now);
    }

    /// At the cap: drops the tenth of buckets closest to full (earliest refill).
    fn evict_fullest(&mut self) {
        let mut tats: Vec<Instant> = self.buckets.values().copied().collect();
        let drop = (self.max_buckets / 10).max(1).min(tats.len());
        let (_, cutoff, _) = tats.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.buckets.retain(|_, tat| {
            if dropped < drop && *tat <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Where the limiter reads time: the monotonic instant for buckets, and the wall clock for
/// `X-RateLimit-Reset`. Injectable so that tests move time by hand.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, both ways.
    fn now(&self) -> (Instant, DateTime<Utc>);
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> (Instant, DateTime<Utc>) {
        (Instant::now(), Utc::now())
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: (Instant, DateTime<Utc>),
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// Starts at the real now, with the wall clock reading `wall`.
    pub fn new(wall: DateTime<Utc>) -> ManualClock {
        ManualClock { start: (Instant::now(), wall), offset: Mutex::new(Duration::ZERO) }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> (Instant, DateTime<Utc>) {
        let off = *self.offset.lock().unwrap_or_else(|e| e.into_inner());
        (self.start.0 + off, self.start.1 + TimeDelta::from_std(off).unwrap_or(TimeDelta::zero()))
    }
}

/// The process's limiter behind a lock, with its clock. Cheap to clone; shared by every API
/// surface so that a key has one budget per category whichever API it calls.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Mutex<Limiter>>,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// A limiter on the system clock.
    pub fn new(limits: Limits, max_buckets: usize) -> RateLimiter {
        RateLimiter::with_clock(limits, max_buckets, Arc::new(SystemClock))
    }

    /// A limiter on `clock`.
    pub fn with_clock(limits: Limits, max_buckets: usize, clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter { inner: Arc::new(Mutex::new(Limiter::new(limits, max_buckets))), clock }
    }

    /// Counts one request; the decision and the wall-clock time of the check.
    pub fn check(&self, key: &KeyId, category: Category) -> Option<(Decision, DateTime<Utc>)> {
        let (now, wall) = self.clock.now();
        let d = self.inner.lock().unwrap_or_else(|e| e.into_inner()).check(key, category, now)?;
        Some((d, wall))
    }
}

/// State of the [`rate_limit`] layer.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    /// The shared limiter.
    pub limiter: RateLimiter,
    /// How a 429 is rendered.
    pub flavor: Flavor,
}

/// Adds the `X-RateLimit-*` headers of `d` (checked at `wall`) to `resp`.
pub fn set_headers(resp: &mut Response, d: &Decision, wall: DateTime<Utc>) {
    let reset = wall + TimeDelta::from_std(d.reset_after).unwrap_or(TimeDelta::zero());
    let h = resp.headers_mut();
    h.insert(LIMIT_HEADER, HeaderValue::from(d.limit));
    h.insert(REMAINING_HEADER, HeaderValue::from(d.remaining));
    if let Ok(v) = HeaderValue::from_str(&reset.to_rfc3339_opts(SecondsFormat::Millis, true)) {
        h.insert(RESET_HEADER, v);
    }
}

/// Middleware: counts the request against its key's bucket for the route's category, then
/// passes it on or answers 429; adds the headers either way. Runs after [`super::auth::require_auth`]
/// (it needs the [`Principal`]); a request without one, or of an unlimited category, passes
/// untouched.
pub async fn rate_limit(State(layer): State<RateLimitLayer>, req: Request, next: Next) -> Response {
    let Some(principal) = req.extensions().get::<Principal>() else {
        return next.run(req).await;
    };
    let template = req.extensions().get::<MatchedPath>().map_or("/api/", |m| m.as_str());
    let category = Category::for_route(req.method(), template);
    let Some((decision, wall)) = layer.limiter.check(&principal.key_id, category) else {
        return next.run(req).await;
    };
    let mut resp = match decision.retry_after {
        Some(retry_after) => {
            tracing::debug!(key = %principal.key_id.prefix(), %category, "rate limited");
            ApiError::RateLimited { retry_after }.into_response_as(layer.flavor)
        }
        None => next.run(req).await.into_response(),
    };
    set_headers(&mut resp, &decision, wall);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).expect("id")
    }

    #[test]
    fn routes_are_classified_as_the_reference_says() {
        let cases = [
            (Method::POST, "/api/training/start", Category::Training),
            (Method::POST, "/api/upload/signed-url", Category::Upload),
            (Method::POST, "/api/datasets/ingest", Category::Upload),
            (Method::POST, "/api/models/{modelId}/predict", Category::Predict),
            (Method::POST, "/api/models/{id}/predict", Category::Predict),
            (Method::POST, "/api/exports", Category::Export),
            (Method::GET, "/api/exports", Category::Default),
            (Method::POST, "/api/datasets/{datasetId}/export", Category::Export),
            (Method::GET, "/api/datasets/{datasetId}/export", Category::Export),
            (Method::PATCH, "/api/datasets/{datasetId}/export", Category::Default),
            (Method::GET, "/api/models/{modelId}/download", Category::Download),
            (Method::GET, "/api/datasets", Category::Default),
            (Method::POST, "/api/api-keys", Category::Default),
            (Method::POST, "/{namespace}/{name}/{*rest}", Category::Dedicated),
            (Method::GET, "/openapi.json", Category::Dedicated),
        ];
        for (m, t, want) in cases {
            assert_eq!(Category::for_route(&m, t), want, "{m} {t}");
        }
    }

    #[test]
    fn the_default_limits_are_the_reference_table() {
        let l = Limits::default();
        let want = [(Category::Default, 100), (Category::Training, 10), (Category::Upload, 10)];
        for (c, n) in want {
            assert_eq!(l.get(c), Some(n), "{c}");
        }
        assert_eq!(l.get(Category::Predict), Some(20));
        assert_eq!(l.get(Category::Export), Some(20));
        assert_eq!(l.get(Category::Download), Some(30));
        assert_eq!(l.get(Category::Dedicated), None);
    }

    #[test]
    fn overrides_parse() {
        let l = Limits::with_overrides("default=5, predict=unlimited").expect("parse");
        assert_eq!(l.get(Category::Default), Some(5));
        assert_eq!(l.get(Category::Predict), None);
        assert_eq!(l.get(Category::Training), Some(10));
        for bad in ["default", "default=0", "default=x", "dedicated=5", "nope=3"] {
            assert!(Limits::with_overrides(bad).is_err(), "{bad}");
        }
        assert_eq!(Limits::with_overrides("").expect("empty"), Limits::default());
    }

    #[test]
    fn a_full_budget_then_refusal_then_refill() {
        let mut l = Limiter::new(Limits::default(), 100);
        let t0 = Instant::now();
        let k = id("0000aaaa");
        for i in 0..10 {
            let d = l.check(&k, Category::Training, t0).expect("limited");
            assert!(d.allowed(), "request {i}");
            assert_eq!(d.limit, 10);
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_after, Duration::from_secs(6 * (u64::from(i) + 1)));
        }
        let d = l.check(&k, Category::Training, t0).expect("limited");
        assert!(!d.allowed());
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(Duration::from_secs(6)), "one token every 6 s");
        assert_eq!(d.reset_after, Duration::from_secs(60));
        // A refusal costs nothing: just before the token, still refused; at it, allowed.
        let d = l.check(&k, Category::Training, t0 + Duration::from_millis(5999)).expect("limited");
        assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
        let d = l.check(&k, Category::Training, t0 + Duration::from_secs(6)).expect("limited");
        assert!(d.allowed());
        assert_eq!(d.remaining, 0);
        // After a full minute idle, the whole budget again.
        let d = l.check(&k, Category::Training, t0 + Duration::from_secs(6 + 60)).expect("limited");
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn categories_and_keys_have_independent_budgets() {
        let mut l = Limiter::new(Limits::default(), 100);
        let t0 = Instant::now();
        let (a, b) = (id("0000aaaa"), id("0000bbbb"));
        for _ in 0..20 {
            assert!(l.check(&a, Category::Predict, t0).expect("limited").allowed());
        }
        assert!(!l.check(&a, Category::Predict, t0).expect("limited").allowed());
        let d = l.check(&a, Category::Default, t0).expect("limited");
        assert!(d.allowed());
        assert_eq!(d.remaining, 99, "20 predicts do not touch the default budget");
        assert_eq!(l.check(&b, Category::Predict, t0).expect("limited").remaining, 19);
        assert!(l.check(&a, Category::Dedicated, t0).is_none());
    }

    #[test]
    fn full_buckets_are_swept_and_the_cap_holds() {
        let mut l = Limiter::new(Limits::default(), 50);
        let t0 = Instant::now();
        for i in 0..50u32 {
            l.check(&id(&format!("{i:08x}")), Category::Default, t0);
        }
        assert_eq!(l.len(), 50);
        // At the cap, a new key evicts the fullest tenth instead of growing.
        l.check(&id("ffffffff"), Category::Default, t0 + Duration::from_millis(1));
        assert!(l.len() <= 50, "{}", l.len());
        assert!(l.len() >= 45, "{}", l.len());
        // A minute later every bucket has refilled: the sweep empties the map.
        l.check(&id("eeeeeeee"), Category::Default, t0 + Duration::from_secs(61));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_manual_clock_moves_both_clocks() {
        let wall = DateTime::parse_from_rfc3339("2026-02-21T12:34:56Z").expect("t").with_timezone(&Utc);
        let c = ManualClock::new(wall);
        let (i0, w0) = c.now();
        c.advance(Duration::from_millis(1500));
        let (i1, w1) = c.now();
        assert_eq!(i1 - i0, Duration::from_millis(1500));
        assert_eq!(w0, wall);
        assert_eq!(w1.to_rfc3339_opts(SecondsFormat::Millis, true), "2026-02-21T12:34:57.500Z");
    }
}
