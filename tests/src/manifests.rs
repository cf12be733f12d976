//! Strict parsing of rendered manifests: each document is deserialised into its typed
//! k8s-openapi struct and serialised back; any field lost on the way (a typo, a wrong nesting)
//! makes it invalid.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::{apps, core, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Splits a multi-document YAML stream into JSON values, skipping empty documents.
pub fn parse_stream(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = <Value as serde::Deserialize>::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Removes nulls so that `a: null` and an absent `a` compare equal.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Differences between `a` and `b` as JSON paths (first few only).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(&format!("{path}.{k}"), va, vb, out),
                    None => out.push(format!("{path}.{k} is not a field of this kind")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        // Numbers may change representation (1 vs 1.0); compare numerically.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<()> {
    let typed: T = serde_json::from_value(v.clone()).context("does not deserialise")?;
    let mut back = serde_json::to_value(&typed)?;
    let mut orig = v.clone();
    strip_nulls(&mut back);
    strip_nulls(&mut orig);
    let mut d = vec![];
    diff("", &orig, &back, &mut d);
    if !d.is_empty() {
        bail!("fields lost in parsing: {d:?}");
    }
    Ok(())
}

/// Checks that `v` is a well-formed object of a kind the chart is allowed to render.
pub fn validate_object(v: &Value) -> Result<()> {
    let api = v["apiVersion"].as_str().ok_or_else(|| anyhow!("no apiVersion"))?;
    let kind = v["kind"].as_str().ok_or_else(|| anyhow!("no kind"))?;
    let name = v["metadata"]["name"].as_str().ok_or_else(|| anyhow!("{kind} has no metadata.name"))?;
    let r = match (api, kind) {
        ("v1", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(v),
        ("v1", "Secret") => roundtrip::<core::v1::Secret>(v),
        ("v1", "Service") => roundtrip::<core::v1::Service>(v),
        ("v1", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(v),
        ("v1", "PersistentVolumeClaim") => roundtrip::<core::v1::PersistentVolumeClaim>(v),
        ("apps/v1", "Deployment") => roundtrip::<apps::v1::Deployment>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => roundtrip::<rbac::v1::ClusterRoleBinding>(v),
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<rbac::v1::Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(v),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => roundtrip::<CustomResourceDefinition>(v),
        _ => bail!("unexpected kind {api}/{kind}"),
    };
    r.with_context(|| format!("{kind}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_field_is_caught() {
        let ok = parse_stream("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n")
            .expect("yaml");
        validate_object(&ok[0]).expect("valid service");
        let typo = parse_stream("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  prots: [{port: 80}]\n")
            .expect("yaml");
        let err = validate_object(&typo[0]).expect_err("typo must fail");
        assert!(format!("{err:#}").contains("spec.prots"), "{err:#}");
        let wrong_type =
            parse_stream("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: 80\n").expect("yaml");
        assert!(validate_object(&wrong_type[0]).is_err());
    }
}
