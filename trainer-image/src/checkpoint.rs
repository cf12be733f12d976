//! String metadata in a safetensors file's header (`__metadata__`, which the format reserves for
//! it), so that a checkpoint's tensors carry their own schedule position: one object, written by
//! one PUT, is a whole checkpoint, whatever happens between it and its JSON sidecar.
//!
//! Layout: an 8-byte little-endian header length, the JSON header (tensor name to dtype, shape
//! and byte offsets relative to the data section), padding, then the data. Offsets do not depend
//! on the header's size, so adding metadata rewrites only the header.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The metadata key reserved by the safetensors format.
const METADATA: &str = "__metadata__";
/// Largest header read (the format's readers refuse over 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Bytes that are not a safetensors file (or a header that cannot take metadata).
#[derive(Debug, thiserror::Error)]
#[error("not a safetensors file: {0}")]
pub struct NotSafetensors(String);

fn bad(why: impl std::fmt::Display) -> NotSafetensors {
    NotSafetensors(why.to_string())
}

/// The header (parsed) and where the data section starts.
fn split(bytes: &[u8]) -> Result<(Map<String, Value>, usize), NotSafetensors> {
    let len: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("shorter than 8 bytes"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER || 8 + len > bytes.len() as u64 {
        return Err(bad(format!("header length {len} for {} bytes", bytes.len())));
    }
    let end = 8 + len as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..end]).map_err(bad)?;
    Ok((header, end))
}

/// `bytes` (a safetensors file) with `entries` added to its header's metadata; existing keys are
/// replaced, other metadata kept. Only the header is replaced in place: a checkpoint of a
/// gigabyte is not copied.
pub fn with_metadata(mut bytes: Vec<u8>, entries: &BTreeMap<String, String>) -> Result<Vec<u8>, NotSafetensors> {
    let (mut header, data) = split(&bytes)?;
    let meta = header.entry(METADATA).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return Err(bad("__metadata__ is not an object")) };
    for (k, v) in entries {
        meta.insert(k.clone(), Value::String(v.clone()));
    }
    let mut json = serde_json::to_vec(&header).map_err(bad)?;
    // Spaces pad the header so the data stays 8-byte aligned, as the format's writers do.
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let prefix = (json.len() as u64).to_le_bytes().into_iter().chain(json);
    bytes.splice(..data, prefix);
    Ok(bytes)
}

/// The header's metadata (empty when it has none).
pub fn metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, NotSafetensors> {
    let (header, _) = split(bytes)?;
    match header.get(METADATA) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad(format!("metadata {k:?} is not a string"))),
            })
            .collect(),
        Some(_) => Err(bad("__metadata__ is not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as safetensors' writers lay it out: one F32 tensor `[2]`.
    fn file() -> Vec<u8> {
        let mut header = br#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(1.0f32.to_le_bytes());
        out.extend(2.0f32.to_le_bytes());
        out
    }

    #[test]
    fn metadata_is_added_read_back_and_the_data_kept() {
        let f = file();
        assert!(metadata(&f).expect("plain").is_empty());
        let entries = BTreeMap::from([("progress".to_string(), r#"{"epoch":3}"#.to_string())]);
        let g = with_metadata(f.clone(), &entries).expect("add");
        assert_eq!(metadata(&g).expect("read"), entries);
        assert_eq!(&g[g.len() - 8..], &f[f.len() - 8..], "data unchanged");
        let len = u64::from_le_bytes(g[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(len % 8, 0, "data stays aligned");
        let (header, _) = split(&g).expect("header");
        assert_eq!(header["t"]["data_offsets"], serde_json::json!([0, 8]));
        // Replacing a key keeps the others.
        let more = BTreeMap::from([("progress".to_string(), "{}".to_string()), ("x".to_string(), "y".to_string())]);
        let h = with_metadata(g, &more).expect("replace");
        assert_eq!(metadata(&h).expect("read"), more);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors() {
        let f = file();
        for bytes in [&f[..4], &f[..12], b"not a safetensors file at all".as_slice()] {
            assert!(metadata(bytes).is_err() && with_metadata(bytes.to_vec(), &BTreeMap::new()).is_err());
        }
        let mut huge = f.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(metadata(&huge).is_err());
    }
}
