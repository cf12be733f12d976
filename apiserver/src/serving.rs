//! What a deployment serves, named the way vendors' APIs name it: an Export or a TrainingJob of
//! the namespace (Roboflow's `/add`, Label Studio's `/api/ml`).

use kube::ResourceExt;
use ocellus_crds::{CheckpointKind, ExportFormat, ExportPhase, LocalRef, ModelSource, TrainingJobCheckpointRef};

use crate::api::ApiError;
use crate::ultralytics::UltralyticsApi;

/// What a deployment named `name` serves: the Export of that name, else the TrainingJob of that
/// name through its newest succeeded ONNX Export, else that TrainingJob's `best` weights.
pub fn model_source(api: &UltralyticsApi, ns: &str, name: &str) -> Result<ModelSource, ApiError> {
    let source = |export: Option<String>, training_job: Option<String>| ModelSource {
        export: export.map(|name| LocalRef { name }),
        training_job: training_job.map(|name| TrainingJobCheckpointRef { name, checkpoint: CheckpointKind::Best }),
        uri: None,
        format: None,
        sha256: None,
        class_names: vec![],
    };
    let exports = api.exports_in(ns);
    if let Some(e) = exports.iter().find(|e| e.name_any() == name) {
        if let Some(st) = e.status.as_ref().filter(|s| s.phase == ExportPhase::Failed) {
            let why = st.common.conditions.iter().find_map(|c| c.message.clone()).unwrap_or_default();
            return Err(ApiError::Conflict(format!("export '{name}' failed, there is nothing to serve: {why}")));
        }
        return Ok(source(Some(name.into()), None));
    }
    if api.training_job(ns, name).is_none() {
        return Err(ApiError::NotFound(format!(
            "an Export or TrainingJob named '{name}' in workspace '{ns}' (a deployment serves the one its \
             deployment_name, or model, names)"
        )));
    }
    let mut onnx: Vec<_> = exports
        .iter()
        .filter(|e| {
            e.spec.source.training_job.as_ref().is_some_and(|t| t.name == name)
                && e.spec.format == ExportFormat::Onnx
                && e.status.as_ref().is_some_and(|s| s.phase == ExportPhase::Succeeded)
        })
        .collect();
    onnx.sort_by_key(|e| std::cmp::Reverse(e.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    Ok(match onnx.first() {
        Some(e) => source(Some(e.name_any()), None),
        None => source(None, Some(name.into())),
    })
}
