//! Start-up check that the cluster serves every Ocellus kind before the operator reports ready.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, ResourceExt};

/// Errors of the CRD check.
#[derive(Debug, thiserror::Error)]
pub enum CrdCheckError {
    /// Listing CRDs failed for a reason retrying will not fix.
    #[error("cannot read CustomResourceDefinitions: {0}")]
    Api(#[from] kube::Error),
}

/// Names of the CRDs the operator needs.
pub fn required_crds() -> Vec<String> {
    ocellus_crds::all_crds().into_iter().map(|(_, crd)| crd.name_any()).collect()
}

/// Returns the required CRDs that are missing from `present`.
pub fn missing<'a>(required: &'a [String], present: &[String]) -> Vec<&'a str> {
    required.iter().filter(|r| !present.contains(r)).map(String::as_str).collect()
}

/// Waits (logging what is missing) until every Ocellus CRD is installed.
pub async fn wait_for_crds(client: &Client) -> Result<(), CrdCheckError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let required = required_crds();
    let mut delay = Duration::from_millis(500);
    loop {
        match api.list(&Default::default()).await {
            Ok(list) => {
                let present: Vec<String> = list.items.iter().map(|c| c.name_any()).collect();
                let missing = missing(&required, &present);
                if missing.is_empty() {
                    return Ok(());
                }
                tracing::warn!(?missing, "waiting for CRDs (install the chart or `kubectl apply -f crds/yaml`)");
            }
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 401 => {
                return Err(CrdCheckError::Api(kube::Error::Api(e)));
            }
            Err(e) => tracing::warn!(error = %e, "listing CRDs failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_crds() {
        let required = required_crds();
        assert_eq!(required.len(), 4);
        assert!(required.contains(&"modeldeployments.ocellus.dev".to_string()));
        let present = vec!["datasets.ocellus.dev".to_string(), "exports.ocellus.dev".to_string()];
        assert_eq!(missing(&required, &present), vec!["trainingjobs.ocellus.dev", "modeldeployments.ocellus.dev"]);
        assert!(missing(&required, &required).is_empty());
    }
}
