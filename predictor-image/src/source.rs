//! Fetching the model: an `s3://` URI (through `ocellus-storage`: a timeout per attempt, retries
//! with back-off, resumed downloads) or a local path, plus what it is: its `ModelInfo` sidecar
//! (`<artifact>.json`, whose SHA-256 the artifact must match), or, for an Ultralytics export that
//! has none, the metadata Ultralytics embeds (ONNX `metadata_props`, TorchScript `config.txt`),
//! checked against the ONNX graph's declared output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus_core::ErrorKind;
use ocellus_storage::{FetchOptions, Location, Storage, StorageError};
use ocellus_vision::ModelInfo;
use sha2::{Digest, Sha256};

/// Why the model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Missing, corrupt or mismatched: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// Storage unreachable or slow after all retries.
    #[error("{0}")]
    Transient(String),
}

/// Largest artifact accepted.
const MAX_ARTIFACT: u64 = 8 << 30;

fn source_error(e: StorageError) -> SourceError {
    match e.kind {
        ErrorKind::Permanent => SourceError::Permanent(e.message),
        ErrorKind::Transient => SourceError::Transient(e.message),
    }
}

/// A missing object said plainly (`<uri> does not exist`); other failures as they are.
fn missing_or(uri: &str, e: StorageError) -> SourceError {
    if e.reason == "NotFound" { SourceError::Permanent(format!("{uri} does not exist")) } else { source_error(e) }
}

/// Fetches the artifact and its sidecar into `work` (S3) or uses them in place (local path);
/// verifies the SHA-256 against the sidecar's and, when given, the pinned `expect_sha256`.
/// Without a sidecar, the artifact's own Ultralytics metadata describes it.
pub async fn fetch(
    uri: &str,
    work: &Path,
    timeout: Duration,
    retries: u32,
    expect_sha256: Option<&str>,
) -> Result<(PathBuf, ModelInfo), SourceError> {
    let location = Location::parse(uri).map_err(source_error)?;
    let (artifact, sidecar) = if let Location::S3(_) = &location {
        std::fs::create_dir_all(work).map_err(|e| SourceError::Transient(e.to_string()))?;
        let name = location.file_name().unwrap_or("model");
        let (a, s) = (work.join(name), work.join(format!("{name}.json")));
        let storage = Storage::from_env();
        let opts = FetchOptions { max_bytes: MAX_ARTIFACT, attempt_timeout: Some(timeout), retries };
        let sidecar_uri = format!("{uri}.json");
        let sidecar = match storage.fetch(&sidecar_uri, &s, &opts).await {
            Ok(_) => Some(s),
            Err(e) if e.reason == "NotFound" => None,
            Err(e) => return Err(source_error(e)),
        };
        storage.fetch(uri, &a, &opts).await.map_err(|e| missing_or(uri, e))?;
        (a, sidecar)
    } else {
        let s = PathBuf::from(format!("{uri}.json"));
        (PathBuf::from(uri), s.exists().then_some(s))
    };
    let bytes = std::fs::read(&artifact).map_err(|e| SourceError::Permanent(format!("{}: {e}", artifact.display())))?;
    // The pin first: nothing of an artifact that is not the pinned one is parsed.
    if let Some(pin) = expect_sha256 {
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(pin) {
            return Err(SourceError::Permanent(format!("{uri}: SHA-256 {got} is not the pinned {pin}")));
        }
    }
    let info = match &sidecar {
        Some(sidecar) => {
            let text = std::fs::read(sidecar)
                .map_err(|e| SourceError::Permanent(format!("model info {}: {e}", sidecar.display())))?;
            serde_json::from_slice(&text)
                .map_err(|e| SourceError::Permanent(format!("model info {}: {e}", sidecar.display())))?
        }
        None => embedded_info(&artifact, &bytes).map_err(|e| {
            SourceError::Permanent(format!(
                "{}: no model info ({}.json, which `ocellus-trainer export` writes) and {e}",
                artifact.display(),
                artifact.display()
            ))
        })?,
    };
    let what = sidecar.as_ref().map_or_else(|| artifact.display().to_string(), |s| s.display().to_string());
    if info.names.is_empty() || !info.imgsz.is_multiple_of(32) || info.imgsz == 0 {
        return Err(SourceError::Permanent(format!(
            "model info {what}: needs class names and an imgsz that is a multiple of 32"
        )));
    }
    if let Some(want) = &info.sha256 {
        let got = hex::encode(Sha256::digest(&bytes));
        if &got != want {
            return Err(SourceError::Permanent(format!(
                "{}: SHA-256 {got} does not match the model info's {want}",
                artifact.display()
            )));
        }
    }
    Ok((artifact, info))
}

/// What an Ultralytics export says about itself: ONNX `metadata_props` (checked against the
/// graph's input type and output shape) or a TorchScript archive's `config.txt`.
pub fn embedded_info(path: &Path, bytes: &[u8]) -> Result<ModelInfo, String> {
    use ocellus_interop::metadata::{self, ExportMetadata};
    let is_zip = bytes.starts_with(b"PK\x03\x04");
    let (meta, format, declared, half_input) = if is_zip {
        let config = metadata::torchscript_config(std::io::Cursor::new(bytes))?.ok_or(
            "the archive has no Ultralytics metadata (a TorchScript export's extra/config.txt); a .pt checkpoint is not \
             served as it is: export it, or import it with `ocellus-trainer import`",
        )?;
        (ExportMetadata::from_json(&config)?, "torchscript", None, None)
    } else {
        let header = metadata::onnx_header(bytes).map_err(|e| format!("it is not an ONNX model either ({e})"))?;
        if header.props.is_empty() {
            return Err("the ONNX model carries no Ultralytics metadata (metadata_props)".into());
        }
        let meta = ExportMetadata::from_onnx_props(&header.props)?;
        let output = header.outputs.first().map(|o| o.dims.clone());
        let half = header.inputs.first().map(|i| i.elem_type == metadata::FLOAT16);
        (meta, "onnx", output, half)
    };
    meta.check(declared.as_deref()).map_err(|e| format!("its Ultralytics metadata does not fit: {e}"))?;
    let rows = declared.as_ref().and_then(|d| d.get(1).copied().flatten()).and_then(|r| u32::try_from(r).ok());
    tracing::info!(
        path = %path.display(), version = %meta.version, task = %meta.task, classes = meta.names.len(),
        imgsz = meta.imgsz.0, end2end = meta.end2end, "no sidecar: using the Ultralytics metadata embedded in the model"
    );
    Ok(ModelInfo {
        architecture: meta.architecture,
        task: meta.task,
        names: meta.names,
        imgsz: meta.imgsz.0,
        format: format.into(),
        sha256: None,
        batch: meta.batch.max(1),
        dynamic: meta.dynamic,
        half: half_input.unwrap_or(meta.half),
        end2end: meta.end2end.then(|| rows.unwrap_or(meta.max_det)),
        quantization: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(dir: &Path) -> String {
        std::fs::create_dir_all(dir).expect("dir");
        let path = dir.join("model.onnx");
        std::fs::write(&path, b"not really onnx").expect("artifact");
        let info = serde_json::json!({
            "architecture": "yolov8n", "task": "detect", "names": ["a"], "imgsz": 64, "format": "onnx",
            "sha256": hex::encode(Sha256::digest(b"not really onnx")),
        });
        std::fs::write(dir.join("model.onnx.json"), info.to_string()).expect("sidecar");
        path.display().to_string()
    }

    #[tokio::test]
    async fn a_pinned_sha256_must_match_the_artifact() {
        let dir = std::env::temp_dir().join(format!("ocellus-source-pin-{}", std::process::id()));
        let uri = artifact(&dir);
        let right = hex::encode(Sha256::digest(b"not really onnx"));
        let t = Duration::from_secs(5);
        assert!(fetch(&uri, &dir, t, 0, Some(&right)).await.is_ok());
        assert!(fetch(&uri, &dir, t, 0, None).await.is_ok());
        match fetch(&uri, &dir, t, 0, Some(&"0".repeat(64))).await {
            Err(SourceError::Permanent(m)) => assert!(m.contains("is not the pinned"), "{m}"),
            other => panic!("a wrong pin was served: {:?}", other.map(|x| x.0)),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// An ONNX header as Ultralytics writes it (a graph with no nodes: only the header is read).
    fn ultralytics_onnx(output: &[i64], nms: bool) -> Vec<u8> {
        use ocellus_vision::onnx::{Dim, Graph};
        let args = if nms { "{'batch': 1, 'nms': True}" } else { "{'batch': 1, 'half': False}" };
        let props =
            ocellus_interop::metadata::example_props("[64, 64]", "{0: 'circle', 1: 'square', 2: 'triangle'}", args);
        let out: Vec<Dim> = output.iter().map(|d| Dim::Fixed(*d)).collect();
        let input = [Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)];
        Graph::default().into_model(("images", &input), ("output0", &out), 17, &props)
    }

    #[test]
    fn ultralytics_metadata_stands_in_for_the_sidecar() {
        let p = Path::new("best.onnx");
        let info = embedded_info(p, &ultralytics_onnx(&[1, 7, 84], false)).expect("raw layout");
        assert_eq!((info.architecture.as_str(), info.imgsz, info.end2end, info.batch), ("yolov8n", 64, None, 1));
        assert_eq!(info.names, ["circle", "square", "triangle"]);
        assert_eq!(info.output_shape(), vec![7, 84]);
        let info = embedded_info(p, &ultralytics_onnx(&[1, 300, 6], true)).expect("end-to-end layout");
        assert_eq!(info.end2end, Some(300));
        // Metadata that does not fit the graph is refused, naming both.
        let e = embedded_info(p, &ultralytics_onnx(&[1, 84, 84], false)).expect_err("refused");
        assert!(e.contains("[1, 84, 84]") && e.contains("[batch, 7, 84]"), "{e}");
        let e = embedded_info(p, &ultralytics_onnx(&[1, 7, 84], true)).expect_err("refused");
        assert!(e.contains("end2end true"), "{e}");
        let e = embedded_info(p, b"PK\x03\x04 truncated zip").expect_err("refused");
        assert!(e.contains("TorchScript"), "{e}");
    }

    #[tokio::test]
    async fn no_sidecar_and_no_metadata_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("ocellus-source-bare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bare.onnx");
        let input = [ocellus_vision::onnx::Dim::Fixed(1)];
        std::fs::write(
            &path,
            ocellus_vision::onnx::Graph::default().into_model(("images", &input), ("output0", &input), 17, &[]),
        )
        .expect("write");
        match fetch(&path.display().to_string(), &dir, Duration::from_secs(5), 0, None).await {
            Err(SourceError::Permanent(m)) => {
                assert!(m.contains("no model info") && m.contains("no Ultralytics metadata"), "{m}")
            }
            other => panic!("served a model nothing describes: {:?}", other.map(|x| x.1)),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
