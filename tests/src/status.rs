//! Status snapshots of the four Ocellus kinds, for the GitOps health fixtures.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::ListParams;
use kube::{Api, Client};
use ocellus_crds::{Dataset, Export, ModelDeployment, TrainingJob};
use serde_json::Value;

/// Writes each Ocellus resource of `namespace` as JSON (name, namespace, generation, spec and
/// status) whenever its phase, its Ready reason or its observed generation changes, as
/// `<dir>/<kind>-<phase>-<reason>[-stale].json`; runs until aborted. The GitOps health tests'
/// fixtures (`tests/fixtures/status/`) are such snapshots of real runs.
pub async fn record(client: Client, namespace: String, dir: PathBuf) {
    let _ = std::fs::create_dir_all(&dir);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let mut objects: Vec<(&str, Value)> = vec![];
        macro_rules! collect {
            ($t:ty, $kind:literal) => {
                if let Ok(list) = Api::<$t>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await {
                    objects.extend(list.items.iter().filter_map(|o| Some(($kind, serde_json::to_value(o).ok()?))));
                }
            };
        }
        collect!(Dataset, "dataset");
        collect!(TrainingJob, "trainingjob");
        collect!(Export, "export");
        collect!(ModelDeployment, "modeldeployment");
        for (kind, mut o) in objects {
            let phase = o["status"]["phase"].as_str().unwrap_or("none").to_string();
            let reason = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["reason"].as_str())
                .unwrap_or("none")
                .to_string();
            let stale = !o["status"].is_null() && o["status"]["observedGeneration"] != o["metadata"]["generation"];
            let key = format!("{kind}-{phase}-{reason}{}", if stale { "-stale" } else { "" });
            if seen.insert(key.clone()) {
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "generation"));
                }
                let _ =
                    std::fs::write(dir.join(format!("{key}.json")), serde_json::to_vec_pretty(&o).unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
