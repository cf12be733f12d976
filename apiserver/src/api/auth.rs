//! Authentication: the API key in each client's native form, resolved to a [`Principal`].
//!
//! Accepted forms, in this order (the first one present decides):
//!
//! 1. `Authorization: Bearer <key>` — Ultralytics, TAO, and most clients;
//! 2. `Authorization: Token <key>` — Label Studio's API;
//! 3. `Authorization: Basic base64(user:key)` — Label Studio's ML-backend setting, the key as
//!    the password (or as the user name with an empty password, as `curl -u <key>:` sends);
//! 4. `?api_key=<key>` — Roboflow.
//!
//! An `Authorization` header with another scheme is refused rather than skipped, so a request
//! never authenticates by a key other than the one its client meant. Refusals are 401 in the
//! calling surface's error shape; logs carry the key's public prefix at most.
//!
//! [`require_auth`] is the layer every REST route sits behind; it puts the [`Principal`] in
//! the request's extensions, where handlers take it as an extractor.

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;

use super::error::{ApiError, AuthFailure, Flavor};
use super::keys::{Action, KeyId, Keys, PlaintextKey, Role};

/// Who is calling: the namespace (workspace) its key acts in, the key's role and public id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The namespace every request of this key reads and writes.
    pub namespace: String,
    /// What the key may do there.
    pub role: Role,
    /// The key's public id (for logs and audit; never the key).
    pub key_id: KeyId,
}

impl Principal {
    /// `Ok` when the role allows `action`, else 403 naming the role and what it lacks.
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.role.allows(action) {
            return Ok(());
        }
        let what = match action {
            Action::Read => "reading",
            Action::Write => "writing",
            Action::ManageKeys => "managing API keys",
        };
        Err(ApiError::Forbidden(format!("an API key with role {} does not allow {what}", self.role)))
    }

    /// `Ok` when `namespace` is the key's own and the role allows `action` (for routes that
    /// name a namespace, like the gateway's `/{namespace}/{name}/...`), else 403.
    pub fn require_in(&self, namespace: &str, action: Action) -> Result<(), ApiError> {
        if namespace != self.namespace {
            return Err(ApiError::Forbidden(format!(
                "this API key acts in namespace {}, not {namespace}",
                self.namespace
            )));
        }
        self.require(action)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    /// The principal [`require_auth`] stored. A route without that layer fails closed (500,
    /// logged as the programming error it is).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route is missing the authentication layer (api::auth::require_auth)"))
    }
}

/// The key a request presents, in any accepted form; `Ok(None)` when it presents none. The
/// error never contains what was sent.
pub fn presented_key(headers: &HeaderMap, uri: &Uri) -> Result<Option<PlaintextKey>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| malformed_err())?.trim();
        let (scheme, rest) = value.split_once(' ').ok_or_else(malformed_err)?;
        let rest = rest.trim();
        let candidate = if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
            rest.to_string()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| malformed_err())?;
            let decoded = String::from_utf8(decoded).map_err(|_| malformed_err())?;
            let (user, password) = decoded.split_once(':').ok_or_else(malformed_err)?;
            if password.is_empty() { user.to_string() } else { password.to_string() }
        } else {
            return Err(malformed_err());
        };
        return PlaintextKey::parse(&candidate).map(Some).map_err(|_| malformed_err());
    }
    let Ok(Query(params)) = Query::<Vec<(String, String)>>::try_from_uri(uri) else {
        return Ok(None);
    };
    match params.into_iter().find(|(k, _)| k == "api_key") {
        Some((_, v)) => PlaintextKey::parse(&v).map(Some).map_err(|_| malformed_err()),
        None => Ok(None),
    }
}

/// Whether a request presents a key in a header or the query: the forms [`presented_key`]
/// decides by, which a key in a JSON body (Roboflow's) must not override.
pub fn presents_key(headers: &HeaderMap, uri: &Uri) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || uri.query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("api_key")))
}

/// Sets `key` (taken from a JSON body) as the request's `Authorization: Bearer`, marked
/// sensitive so that it is never logged; a key that cannot be a header value is left out, and
/// the request is then refused as presenting none.
pub fn set_bearer(headers: &mut HeaderMap, key: &str) {
    if let Ok(mut v) = axum::http::HeaderValue::from_str(&format!("Bearer {key}")) {
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }
}

fn malformed_err() -> ApiError {
    ApiError::Unauthorized(AuthFailure::Malformed)
}

/// Resolves a request's key against `keys`: 401 when none, malformed or not live; 503 while
/// the key cache has not listed once (a key this replica created still works then).
pub fn authenticate(keys: &Keys, headers: &HeaderMap, uri: &Uri) -> Result<Principal, ApiError> {
    let key = presented_key(headers, uri)?.ok_or(ApiError::Unauthorized(AuthFailure::Missing))?;
    match keys.authenticate(&key) {
        Some(r) => Ok(Principal { namespace: r.namespace, role: r.role, key_id: r.id }),
        None if !keys.is_synced() => Err(ApiError::Unavailable {
            what: "the API key cache is".into(),
            retry_after: std::time::Duration::from_secs(1),
        }),
        None => {
            tracing::debug!(key = %key.id().prefix(), "refused an API key that is not live");
            Err(ApiError::Unauthorized(AuthFailure::Invalid))
        }
    }
}

/// State of the [`require_auth`] layer: the key set, and the error shape of the surface it
/// guards.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    /// The live keys.
    pub keys: Keys,
    /// How refusals are rendered.
    pub flavor: Flavor,
}

/// Middleware: authenticates the request and stores its [`Principal`] in the extensions, or
/// answers 401/503 in the layer's flavor. Install with
/// `axum::middleware::from_fn_with_state(AuthLayer { .. }, require_auth)` as a `route_layer`
/// (see [`crate::api::ApiState::protect`]).
pub async fn require_auth(State(layer): State<AuthLayer>, mut req: Request, next: Next) -> Response {
    match authenticate(&layer.keys, req.headers(), req.uri()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response_as(layer.flavor),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::http::HeaderValue;
    use chrono::Utc;

    use super::*;
    use crate::api::keys::{KeyIndex, KeyRecord};

    fn key(n: u8) -> PlaintextKey {
        PlaintextKey::from_bytes([n; 20])
    }

    fn keys_with(k: &PlaintextKey, ns: &str, role: Role) -> Keys {
        Keys::from_index(KeyIndex::from_records([KeyRecord::new(k, ns, role, "t", Utc::now())]))
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn every_native_form_is_accepted() {
        let k = key(5);
        let keys = keys_with(&k, "team-a", Role::Editor);
        let s = k.expose();
        let forms: Vec<(HeaderMap, Uri)> = vec![
            (headers(Some(&format!("Bearer {s}"))), uri("/api/datasets")),
            (headers(Some(&format!("bearer {s}"))), uri("/api/datasets")),
            (headers(Some(&format!("Token {s}"))), uri("/api/datasets")),
            (headers(Some(&format!("Basic {}", b64(&format!("user:{s}"))))), uri("/api/datasets")),
            (headers(Some(&format!("Basic {}", b64(&format!("{s}:"))))), uri("/api/datasets")),
            (headers(None), uri(&format!("/api/datasets?limit=5&api_key={s}"))),
        ];
        for (h, u) in forms {
            let p = authenticate(&keys, &h, &u).unwrap_or_else(|e| panic!("{h:?} {u}: {e}"));
            assert_eq!(p, Principal { namespace: "team-a".into(), role: Role::Editor, key_id: k.id() });
        }
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_refused() {
        let k = key(5);
        let keys = keys_with(&k, "team-a", Role::Editor);
        let other = key(6);
        let cases: Vec<(HeaderMap, Uri, AuthFailure)> = vec![
            (headers(None), uri("/api/datasets"), AuthFailure::Missing),
            (headers(None), uri("/api/datasets?apikey=x"), AuthFailure::Missing),
            (headers(Some(&format!("Bearer {}", other.expose()))), uri("/x"), AuthFailure::Invalid),
            (headers(None), uri(&format!("/x?api_key={}", other.expose())), AuthFailure::Invalid),
            (headers(Some("Bearer nope")), uri("/x"), AuthFailure::Malformed),
            (headers(Some(&format!("Bearer {}", k.expose().to_uppercase()))), uri("/x"), AuthFailure::Malformed),
            (headers(Some(&format!("Digest {}", k.expose()))), uri("/x"), AuthFailure::Malformed),
            (headers(Some(k.expose())), uri("/x"), AuthFailure::Malformed),
            (headers(Some("Basic !!!")), uri("/x"), AuthFailure::Malformed),
            (headers(Some(&format!("Basic {}", b64("no-colon")))), uri("/x"), AuthFailure::Malformed),
        ];
        for (h, u, want) in cases {
            match authenticate(&keys, &h, &u) {
                Err(ApiError::Unauthorized(got)) => assert_eq!(got, want, "{h:?} {u}"),
                other => panic!("{h:?} {u}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_key_with_a_live_id_but_another_secret_part_is_refused() {
        let k = key(5);
        let keys = keys_with(&k, "team-a", Role::Admin);
        let mut forged = k.expose().to_string();
        forged.replace_range(20..21, "6");
        assert_eq!(PlaintextKey::parse(&forged).expect("format").id(), k.id());
        let h = headers(Some(&format!("Bearer {forged}")));
        assert!(matches!(authenticate(&keys, &h, &uri("/x")), Err(ApiError::Unauthorized(AuthFailure::Invalid))));
    }

    #[test]
    fn a_header_decides_over_the_query() {
        let k = key(5);
        let keys = keys_with(&k, "team-a", Role::Editor);
        let h = headers(Some(&format!("Bearer {}", key(6).expose())));
        let u = uri(&format!("/x?api_key={}", k.expose()));
        assert!(matches!(authenticate(&keys, &h, &u), Err(ApiError::Unauthorized(AuthFailure::Invalid))));
    }

    #[test]
    fn before_the_first_listing_unknown_keys_get_503_not_401() {
        let keys = Keys::new();
        let h = headers(Some(&format!("Bearer {}", key(5).expose())));
        let e = authenticate(&keys, &h, &uri("/x")).expect_err("not synced");
        assert_eq!(e.status().as_u16(), 503);
        keys.replace(KeyIndex::default(), Instant::now());
        let e = authenticate(&keys, &h, &uri("/x")).expect_err("synced");
        assert_eq!(e.status().as_u16(), 401);
    }

    #[test]
    fn refusals_never_contain_the_presented_key() {
        let keys = keys_with(&key(5), "team-a", Role::Editor);
        let secret = key(6);
        for h in [
            headers(Some(&format!("Bearer {}", secret.expose()))),
            headers(Some(&format!("Bearer {}x", secret.expose()))),
            headers(Some(&format!("Basic {}", b64(&format!("u:{}x", secret.expose()))))),
        ] {
            let e = authenticate(&keys, &h, &uri("/x")).expect_err("refused");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(&secret.expose()[3..]), "{shown}");
        }
    }

    #[test]
    fn require_checks_role_and_namespace() {
        let p = Principal { namespace: "team-a".into(), role: Role::Editor, key_id: key(1).id() };
        assert!(p.require(Action::Write).is_ok());
        let e = p.require(Action::ManageKeys).expect_err("editor");
        assert_eq!(e.status().as_u16(), 403);
        assert!(e.to_string().contains("role editor"), "{e}");
        assert!(p.require_in("team-a", Action::Read).is_ok());
        assert_eq!(p.require_in("team-b", Action::Read).expect_err("other ns").status().as_u16(), 403);
    }

    #[tokio::test]
    async fn the_extractor_fails_closed_without_the_layer() {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        let e = Principal::from_request_parts(&mut parts, &()).await.expect_err("no layer");
        assert_eq!(e.status().as_u16(), 500);
    }
}
