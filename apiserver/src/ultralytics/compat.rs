//! What the Ultralytics Platform serves and Ocellus does not: every other `/api/...` request is
//! answered in the API's error shape (501 for the platform's routes, 405 for methods no one has
//! there, 404 otherwise), never empty. [`TABLE`] is the
//! compatibility table (docs/ultralytics-compatibility.md lists it; a test keeps them equal).

use axum::extract::Request;

use crate::api::{ApiError, Principal};

/// Why a platform route is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// On the way (issue #13).
    Planned,
    /// A feature of the hosted platform that a self-hosted one does not have.
    NotOffered,
}

/// The platform's routes that Ocellus answers 501, by path prefix (after `/api/`), with the
/// family's name and why.
pub const TABLE: &[(&str, &str, Gap)] = &[
    ("projects", "project updates and clones", Gap::Planned),
    ("models", "model updates, clones, checkpoint uploads and similar images", Gap::Planned),
    ("training", "GPU availability", Gap::Planned),
    ("exports", "exports by id (the reference's `/api/exports`)", Gap::Planned),
    ("webhooks", "training callbacks of the `ultralytics` package", Gap::Planned),
    ("images", "dataset images and labels", Gap::Planned),
    ("billing", "billing", Gap::NotOffered),
    ("explore", "explore (public search)", Gap::NotOffered),
    ("workflows", "agents (workflows)", Gap::NotOffered),
    ("trash", "trash", Gap::NotOffered),
    ("users", "user profiles and follows", Gap::NotOffered),
    ("storage", "storage usage", Gap::NotOffered),
    ("activity", "activity feed", Gap::NotOffered),
    ("integrations", "Roboflow import", Gap::NotOffered),
];

/// Sub-resources of served families that are not served, by path suffix.
pub const SUFFIXES: &[(&str, &str, Gap)] = &[
    ("/images", "dataset images", Gap::Planned),
    ("/embeddings", "dataset embeddings", Gap::NotOffered),
    ("/clone", "dataset clone", Gap::Planned),
    ("/metrics", "deployment metrics", Gap::Planned),
];

/// The answer to an `/api/...` request no route serves (pure).
pub fn answer(method: &str, path: &str) -> ApiError {
    let rest = path.strip_prefix("/api/").unwrap_or(path);
    let family = rest.split('/').next().unwrap_or_default();
    // The platform's methods are GET, POST, PATCH and DELETE (PUT only for workflows and image
    // labels): any other is not a gap, just not allowed.
    let platform_method = ["GET", "HEAD", "POST", "PATCH", "DELETE"].contains(&method)
        || (method == "PUT" && ["workflows", "images"].contains(&family));
    if !platform_method {
        return ApiError::MethodNotAllowed(method.into());
    }
    let gap = TABLE.iter().find(|(prefix, _, _)| *prefix == family).map(|(_, what, gap)| (*what, *gap)).or_else(|| {
        let trimmed = rest.trim_end_matches('/');
        SUFFIXES
            .iter()
            .find(|(s, _, _)| trimmed.ends_with(s) || trimmed.contains(&format!("{s}/")))
            .map(|(_, w, g)| (*w, *g))
    });
    match gap {
        Some((what, Gap::Planned)) => ApiError::NotImplemented { what: format!("{method} {path}: {what} (planned)") },
        Some((what, Gap::NotOffered)) => {
            ApiError::NotImplemented { what: format!("{method} {path}: {what} (a hosted-platform feature)") }
        }
        // Updating a dataset: the platform's PATCH, planned.
        None if family == "datasets" && method == "PATCH" => {
            ApiError::NotImplemented { what: format!("{method} {path}: dataset updates (planned)") }
        }
        // A served path with a method neither the platform nor Ocellus has there.
        None if ["datasets", "deployments", "upload", "account", "api-keys"].contains(&family) => {
            ApiError::MethodNotAllowed(method.into())
        }
        None => ApiError::NotFound(format!("route {method} {path}")),
    }
}

/// Every `/api/...` request that no other route takes (behind authentication, like them).
pub async fn fallback(_principal: Principal, req: Request) -> ApiError {
    answer(req.method().as_str(), req.uri().path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unserved_routes_say_why() {
        let msg = |m: &str, p: &str| answer(m, p).to_string();
        assert!(msg("PATCH", "/api/projects/team-a/p").contains("project updates and clones (planned)"));
        assert!(msg("GET", "/api/training/gpu-availability").contains("GPU availability (planned)"));
        assert!(msg("POST", "/api/models/team-a/p/m/clone").contains("model updates, clones"));
        assert!(msg("GET", "/api/billing/transactions").contains("hosted-platform"));
        assert!(msg("GET", "/api/deployments/team-a/d/metrics").contains("deployment metrics (planned)"));
        assert!(matches!(answer("PATCH", "/api/datasets/team-a/d"), ApiError::NotImplemented { .. }));
        assert!(matches!(answer("PUT", "/api/deployments/team-a/d"), ApiError::MethodNotAllowed(_)));
        assert!(matches!(answer("GET", "/api/no-such-thing"), ApiError::NotFound(_)));
        assert!(matches!(answer("TRACE", "/api/datasets"), ApiError::MethodNotAllowed(_)));
    }
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn the_compatibility_table_in_the_docs_lists_every_gap() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ultralytics-compatibility.md");
        let doc = std::fs::read_to_string(&path).expect("docs/ultralytics-compatibility.md");
        for (_, what, _) in super::TABLE.iter().chain(super::SUFFIXES) {
            assert!(doc.contains(&format!("| {what} |")), "docs/ultralytics-compatibility.md lacks {what:?}");
        }
    }
}
