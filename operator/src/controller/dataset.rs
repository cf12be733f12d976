//! Dataset controller: an ingest Job per source generation (a hash of the spec fields that
//! decide the manifest; `versions` and resyncs never re-ingest), its progress read from the
//! pod's log and its summary from the object store, then one `freeze` Job per requested
//! version, in order. Exit code 2 fails until the spec changes; other failures are retried
//! [`MAX_ATTEMPTS`] times with back-off.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Pod, ResourceRequirements, SecretKeySelector};
use kube::api::LogParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use ocellus_crds::{
    ClassCount, Dataset, DatasetCounts, DatasetPhase, DatasetSpec, DatasetStatus, DatasetVersionStatus, Failure,
    InvalidItemAction, Progress, ValidationSummary,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Context, Error, Health, apply_status, now, owner_ref, set_health};
use crate::config::WorkloadConfig;
use crate::workload::{self, JobRequest, RunFailure, RunState};

/// Field manager of this controller's writes.
pub const MANAGER: &str = "ocellus-operator/dataset";
/// Controller label of metrics.
pub const CONTROLLER: &str = "dataset";
/// Runs of one ingest or freeze before a transient failure becomes final.
pub const MAX_ATTEMPTS: i32 = 3;

/// The hash of the spec fields an ingest depends on (8 hex digits).
pub fn ingest_hash(spec: &DatasetSpec) -> String {
    let inputs =
        serde_json::json!([spec.task, spec.class_names, spec.source, spec.format, spec.split, spec.validation]);
    hex::encode(&Sha256::digest(inputs.to_string().as_bytes())[..4])
}

/// The key prefix of a Dataset in the platform bucket.
pub fn prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}/datasets/{name}")
}

/// `(base, attempt)` of a Job name `<base>-<attempt>`.
fn split_attempt(job: &str) -> Option<(&str, i32)> {
    let (base, n) = job.rsplit_once('-')?;
    Some((base, n.parse().ok()?))
}

/// Builds the ingest Job (pure).
pub fn build_ingest(cfg: &WorkloadConfig, ds: &Dataset, job_name: &str) -> Job {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let spec = &ds.spec;
    let pre = prefix(&ns, &name);
    let mut env = vec![];
    let source = if let Some(s3) = &spec.source.s3 {
        if let Some(secret) = &s3.credentials {
            env.push(secret_env("OCELLUS_SOURCE_ACCESS_KEY_ID", &secret.name, "AWS_ACCESS_KEY_ID"));
            env.push(secret_env("OCELLUS_SOURCE_SECRET_ACCESS_KEY", &secret.name, "AWS_SECRET_ACCESS_KEY"));
        }
        if let Some(e) = &s3.endpoint {
            env.push(EnvVar { name: "OCELLUS_SOURCE_ENDPOINT".into(), value: Some(e.clone()), ..Default::default() });
        }
        if let Some(r) = &s3.region {
            env.push(EnvVar { name: "OCELLUS_SOURCE_REGION".into(), value: Some(r.clone()), ..Default::default() });
        }
        s3.uri.clone()
    } else if let Some(h) = &spec.source.https {
        h.url.clone()
    } else if let Some(u) = &spec.source.upload {
        match u.objects.as_slice() {
            [one] => cfg.uri(&format!("{pre}/uploads/{one}")),
            _ => cfg.uri(&format!("{pre}/uploads/")),
        }
    } else {
        String::new()
    };
    let mut args = vec![
        "ingest".to_string(),
        format!("--source={source}"),
        format!("--prefix={pre}"),
        format!("--name={name}"),
        format!("--task={}", spec.task.as_str()),
        format!(
            "--format={}",
            serde_json::to_value(spec.format)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "auto".into())
        ),
    ];
    if !spec.class_names.is_empty() {
        args.push(format!("--class-names={}", spec.class_names.join(",")));
    }
    if let Some(s) = &spec.split {
        args.extend(["--split".to_string(), s.train.to_string(), s.val.to_string(), s.test.to_string()]);
    }
    let policy = spec.validation.clone().unwrap_or(ocellus_crds::ValidationPolicy {
        on_invalid: InvalidItemAction::Exclude,
        max_invalid_fraction: None,
    });
    args.push(format!(
        "--on-invalid={}",
        match policy.on_invalid {
            InvalidItemAction::Exclude => "exclude",
            InvalidItemAction::Fail => "fail",
        }
    ));
    args.push(format!("--max-invalid-fraction={}", policy.max_invalid_fraction.unwrap_or(0.05)));
    let mut job = workload::job(
        cfg,
        &JobRequest {
            name: job_name.into(),
            namespace: ns,
            owner: owner_ref(ds),
            component: "ingest",
            args,
            env,
            resources: ResourceRequirements::default(),
            ..Default::default()
        },
    );
    // The headers of an https source: every key of the Secret, as `OCELLUS_SOURCE_HEADER_<key>`.
    if let (Some(h), Some(spec)) = (&spec.source.https, job.spec.as_mut())
        && let Some(secret) = &h.headers_secret
        && let Some(pod) = spec.template.spec.as_mut()
    {
        pod.containers[0].env_from = Some(vec![k8s_openapi::api::core::v1::EnvFromSource {
            prefix: Some("OCELLUS_SOURCE_HEADER_".into()),
            secret_ref: Some(k8s_openapi::api::core::v1::SecretEnvSource { name: secret.name.clone(), optional: None }),
            ..Default::default()
        }]);
    }
    job
}

/// Builds the freeze Job of version `version` (pure).
pub fn build_freeze(
    cfg: &WorkloadConfig,
    ds: &Dataset,
    job_name: &str,
    version: &str,
    description: Option<&str>,
) -> Job {
    let ns = ds.namespace().unwrap_or_default();
    let mut args = vec![
        "freeze".to_string(),
        format!("--prefix={}", prefix(&ns, &ds.name_any())),
        format!("--version-name={version}"),
    ];
    if let Some(d) = description {
        args.push(format!("--description={d}"));
    }
    workload::job(
        cfg,
        &JobRequest {
            name: job_name.into(),
            namespace: ns,
            owner: owner_ref(ds),
            component: "freeze",
            args,
            ..Default::default()
        },
    )
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Status fields of an ingest's `summary.json` (pure).
pub fn apply_summary(status: &mut DatasetStatus, summary: &Value, summary_uri: String) {
    let counts = &summary["counts"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    status.counts = Some(DatasetCounts {
        images: n(&counts["images"]),
        classes: n(&counts["classes"]),
        annotations: n(&counts["annotations"]),
        per_split: counts["perSplit"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), n(v))).collect())
            .unwrap_or_default(),
        per_class: counts["perClass"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| ClassCount {
                        name: c["name"].as_str().unwrap_or_default().into(),
                        instances: n(&c["instances"]),
                        images: n(&c["images"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    });
    let invalid = &summary["invalid"];
    status.validation = Some(ValidationSummary {
        invalid_items: n(&invalid["total"]),
        by_reason: invalid["byReason"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), n(v))).collect())
            .unwrap_or_default(),
        samples: invalid["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(10)
                    .map(|i| {
                        format!(
                            "{}: {} ({})",
                            i["file"].as_str().unwrap_or_default(),
                            i["detail"].as_str().unwrap_or_default(),
                            i["kind"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    });
    status.class_names = summary["classNames"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
        .unwrap_or_default();
    status.manifest_uri = summary["manifestUri"].as_str().map(String::from);
    status.summary_uri = Some(summary_uri);
}

/// The last `{"event":"progress"}` line of a log (pure).
pub fn last_progress(log: &str) -> Option<Progress> {
    log.lines().rev().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        (v["event"] == "progress")
            .then(|| Progress { done: v["done"].as_i64().unwrap_or(0), total: v["total"].as_i64() })
    })
}

fn set(st: &mut DatasetStatus, health: Health, generation: Option<i64>) {
    set_health(&mut st.common.conditions, &health, generation, now());
}

/// Marks an ingested Dataset whose requested versions are all frozen Ready (no-op when it
/// already says so, so an idle Dataset writes nothing).
fn settle_ready(st: &mut DatasetStatus, generation: Option<i64>) {
    let ready = st.common.conditions.iter().any(|c| c.type_ == "Ready" && c.is_true());
    let freezing = st.common.conditions.iter().any(|c| c.reason.as_deref() == Some("Freezing"));
    if st.phase == DatasetPhase::Ready && ready && !freezing {
        return;
    }
    st.phase = DatasetPhase::Ready;
    let images = st.counts.as_ref().map(|c| c.images).unwrap_or(0);
    let message = match st.versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>() {
        v if v.is_empty() => format!("{images} images ingested"),
        v => format!("{images} images ingested; frozen: {}", v.join(", ")),
    };
    set(st, Health::Ready { reason: "Ingested".into(), message }, generation);
}

/// Status of a Dataset with no source (pure; no-op when it already says so).
pub fn awaiting_source(st: &mut DatasetStatus, generation: Option<i64>) {
    let waiting = st.common.conditions.iter().any(|c| c.reason.as_deref() == Some("AwaitingSource"));
    if st.phase == DatasetPhase::Pending && waiting {
        return;
    }
    st.phase = DatasetPhase::Pending;
    st.job = Default::default();
    st.progress = None;
    set(
        st,
        Health::Progressing {
            reason: "AwaitingSource".into(),
            message: "no source yet: set spec.source (s3, https or upload)".into(),
        },
        generation,
    );
}

/// Reconciles one Dataset.
pub async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let generation = ds.metadata.generation;
    let old = ds.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.common.observed_generation = generation;
    let hash = ingest_hash(&ds.spec);
    let ingest_base = workload::job_name(&name, &format!("ingest-{hash}"));
    let ingested = st.ingested_hash.as_deref() == Some(hash.as_str());

    if !ingested && ds.spec.source.is_empty() {
        // Nothing to ingest yet (a Dataset created through the REST APIs before its upload):
        // no Job; setting a source is a spec change, which wakes this controller.
        awaiting_source(&mut st, generation);
        write_status(&ds, &ctx, &st, &old).await?;
        return Ok(Action::await_change());
    }
    if !ingested {
        let current =
            st.job.job_name.as_deref().and_then(split_attempt).filter(|(b, _)| *b == ingest_base).map(|(_, n)| n);
        let attempt = current.unwrap_or(1);
        let job_name = format!("{ingest_base}-{attempt}");
        if current.is_none() {
            st.job = Default::default();
            st.progress = None;
        }
        st.job.job_name = Some(job_name.clone());
        let (_, run) = ctx.run_state(&ns, &job_name);
        let mut act_create = false;
        let mut requeue = Some(Duration::from_secs(3));
        match run {
            RunState::Missing => {
                if st.phase == DatasetPhase::Failed && current.is_some() {
                    requeue = None; // a final failure of this source: waits for a spec change
                } else if let Some(wait) =
                    workload::retry_wait(&st.job, attempt - 1, k8s_openapi::jiff::Timestamp::now())
                {
                    requeue = Some(wait);
                } else {
                    st.phase = DatasetPhase::Ingesting;
                    st.job.start_time = Some(now());
                    st.job.completion_time = None;
                    set(
                        &mut st,
                        Health::Progressing {
                            reason: "Ingesting".into(),
                            message: format!("ingest attempt {attempt} starting"),
                        },
                        generation,
                    );
                    act_create = true;
                }
            }
            RunState::Pending { cause } => {
                st.phase = DatasetPhase::Ingesting;
                let (reason, message) = cause
                    .map(|c| (c.reason, c.message))
                    .unwrap_or(("PodPending".into(), "waiting for the ingest pod to start".into()));
                set(&mut st, Health::Progressing { reason, message }, generation);
            }
            RunState::Running => {
                st.phase = DatasetPhase::Ingesting;
                if let Some(p) = log_progress(&ctx, &ns, &job_name).await {
                    st.progress = Some(p);
                }
                let msg = match &st.progress {
                    Some(p) => {
                        format!("{} of {} items", p.done, p.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into()))
                    }
                    None => "ingesting".into(),
                };
                set(&mut st, Health::Progressing { reason: "Ingesting".into(), message: msg }, generation);
            }
            RunState::Succeeded | RunState::Paused => {
                let summary_uri = ctx.config.uri(&format!("{}/summary.json", prefix(&ns, &name)));
                let body = ctx.read(&summary_uri).await?.ok_or_else(|| Error::Output {
                    uri: summary_uri.clone(),
                    message: "missing after a successful ingest".into(),
                })?;
                let summary: Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::Output { uri: summary_uri.clone(), message: e.to_string() })?;
                apply_summary(&mut st, &summary, summary_uri);
                st.ingested_hash = Some(hash.clone());
                st.phase = DatasetPhase::Ready;
                st.progress = None;
                st.job.failure = None;
                st.job.completion_time = Some(now());
                let images = st.counts.as_ref().map(|c| c.images).unwrap_or(0);
                set(
                    &mut st,
                    Health::Ready { reason: "Ingested".into(), message: format!("{images} images ingested") },
                    generation,
                );
                requeue = Some(Duration::from_millis(100)); // versions next
            }
            RunState::Failed(RunFailure { failure, retryable }) => {
                st.job.failure = Some(failure.clone());
                st.job.completion_time = Some(now());
                if retryable && attempt < MAX_ATTEMPTS {
                    st.job.job_name = Some(format!("{ingest_base}-{}", attempt + 1));
                    st.job.start_time = None;
                    let delay = workload::backoff(attempt);
                    set(
                        &mut st,
                        Health::Progressing {
                            reason: "BackoffRetry".into(),
                            message: format!(
                                "ingest attempt {attempt} failed: {}; retrying in {}s",
                                failure.message.clone().unwrap_or_default(),
                                delay.as_secs()
                            ),
                        },
                        generation,
                    );
                    requeue = Some(delay);
                } else {
                    st.phase = DatasetPhase::Failed;
                    set(
                        &mut st,
                        Health::Failed {
                            reason: failure.reason.clone().unwrap_or_else(|| "IngestFailed".into()),
                            message: failure.message.clone().unwrap_or_default(),
                        },
                        generation,
                    );
                    requeue = None;
                }
            }
        }
        write_status(&ds, &ctx, &st, &old).await?;
        if act_create {
            ctx.apply_job(&build_ingest(&ctx.config, &ds, &job_name), MANAGER).await?;
        }
        return Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change));
    }

    // Ingested: freeze the requested versions, in order, one at a time.
    let pending = ds.spec.versions.iter().find(|v| !st.versions.iter().any(|s| s.name == v.name));
    let Some(version) = pending else {
        settle_ready(&mut st, generation);
        write_status(&ds, &ctx, &st, &old).await?;
        return Ok(Action::await_change());
    };
    let base = workload::job_name(&name, &format!("freeze-{}", version.name));
    let current = st.job.job_name.as_deref().and_then(split_attempt).filter(|(b, _)| *b == base).map(|(_, n)| n);
    let attempt = current.unwrap_or(1);
    let job_name = format!("{base}-{attempt}");
    if current.is_none() {
        st.job = Default::default();
    }
    st.job.job_name = Some(job_name.clone());
    let (_, run) = ctx.run_state(&ns, &job_name);
    let mut create = false;
    let mut requeue = Some(Duration::from_secs(2));
    match run {
        RunState::Missing => {
            if current.is_some() && st.common.conditions.iter().any(|c| c.type_ == "Failed" && c.is_true()) {
                requeue = None;
            } else if let Some(wait) = workload::retry_wait(&st.job, attempt - 1, k8s_openapi::jiff::Timestamp::now()) {
                requeue = Some(wait);
            } else {
                st.job.start_time = Some(now());
                set(
                    &mut st,
                    Health::Progressing {
                        reason: "Freezing".into(),
                        message: format!("freezing version {}", version.name),
                    },
                    generation,
                );
                create = true;
            }
        }
        RunState::Pending { .. } | RunState::Running => {}
        RunState::Succeeded | RunState::Paused => {
            let uri = ctx.config.uri(&format!("{}/versions/{}/version.json", prefix(&ns, &name), version.name));
            let body = ctx.read(&uri).await?.ok_or_else(|| Error::Output {
                uri: uri.clone(),
                message: "missing after a successful freeze".into(),
            })?;
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Output { uri: uri.clone(), message: e.to_string() })?;
            st.versions.push(DatasetVersionStatus {
                name: version.name.clone(),
                description: v["description"].as_str().map(String::from),
                manifest_uri: v["manifestUri"].as_str().unwrap_or_default().into(),
                images: v["images"].as_i64().unwrap_or(0),
                created_at: v["createdAt"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            });
            st.job.completion_time = Some(now());
            st.job.failure = None;
            // The conditions move in the same write as the version: no reader sees the last
            // version frozen while the Dataset still says it is freezing.
            match ds.spec.versions.iter().find(|v| !st.versions.iter().any(|s| s.name == v.name)) {
                None => settle_ready(&mut st, generation),
                Some(next) => set(
                    &mut st,
                    Health::Progressing {
                        reason: "Freezing".into(),
                        message: format!("freezing version {}", next.name),
                    },
                    generation,
                ),
            }
            requeue = Some(Duration::from_millis(100));
        }
        RunState::Failed(RunFailure { failure, retryable }) => {
            st.job.failure = Some(failure.clone());
            st.job.completion_time = Some(now());
            if retryable && attempt < MAX_ATTEMPTS {
                st.job.job_name = Some(format!("{base}-{}", attempt + 1));
                st.job.start_time = None;
                requeue = Some(workload::backoff(attempt));
            } else {
                // The manifest stays usable: the Dataset is Ready, but stalled on this version.
                set(
                    &mut st,
                    Health::Failed {
                        reason: failure.reason.clone().unwrap_or_else(|| "FreezeFailed".into()),
                        message: format!("version {}: {}", version.name, failure.message.clone().unwrap_or_default()),
                    },
                    generation,
                );
                requeue = None;
            }
        }
    }
    write_status(&ds, &ctx, &st, &old).await?;
    if create {
        ctx.apply_job(
            &build_freeze(&ctx.config, &ds, &job_name, &version.name, version.description.as_deref()),
            MANAGER,
        )
        .await?;
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// The ingest's latest progress line, from the running pod's log.
async fn log_progress(ctx: &Context, ns: &str, job_name: &str) -> Option<Progress> {
    let job = ctx.job(ns, job_name)?;
    let pod = ctx.pods_of(&job).into_iter().next()?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = LogParams { tail_lines: Some(20), ..Default::default() };
    let log = api.logs(&pod.name_any(), &params).await.ok()?;
    last_progress(&log)
}

async fn write_status(ds: &Dataset, ctx: &Context, new: &DatasetStatus, old: &DatasetStatus) -> Result<(), Error> {
    if new == old && ds.status.is_some() {
        return Ok(());
    }
    apply_status(&ctx.client, ds, new, MANAGER).await?;
    if new.phase != old.phase || ds.status.is_none() {
        let failure: Option<&Failure> = new.job.failure.as_ref();
        let note = match (new.phase, failure) {
            (DatasetPhase::Failed, Some(f)) => {
                format!("{}: {}", f.reason.clone().unwrap_or_default(), f.message.clone().unwrap_or_default())
            }
            (p, _) => format!("{p:?}"),
        };
        ctx.event(ds, new.phase == DatasetPhase::Failed, &format!("{:?}", new.phase), note);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
