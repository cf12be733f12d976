use super::*;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    Toleration,
};
use serde_json::json;

fn cfg() -> WorkloadConfig {
    WorkloadConfig::for_tests("ghcr.io/ocellus-dev/ocellus-trainer:1.0", "platform")
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "ocellus.dev/v1alpha1".into(),
        kind: "TrainingJob".into(),
        name: "shapes".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[test]
fn a_gpu_job_is_built_whole() {
    let req = JobRequest {
        name: "shapes-1".into(),
        namespace: "team-a".into(),
        owner: owner(),
        component: "train",
        args: vec!["train".into(), "--epochs=3".into()],
        env: vec![],
        resources: ResourceRequirements::default(),
        gpu: Some(GpuRequest { count: 2, product: Some("NVIDIA-H100-80GB-HBM3".into()), mig_profile: None }),
        scheduling: Scheduling { priority_class_name: Some("high".into()), ..Default::default() },
        active_deadline_seconds: Some(3600),
        termination_grace_period_seconds: Some(300),
        queue_name: Some("team-a-queue".into()),
    };
    let job = serde_json::to_value(job(&cfg(), &req)).expect("json");
    let labels = json!({
        "app.kubernetes.io/component": "train", "app.kubernetes.io/managed-by": "ocellus-operator",
        "app.kubernetes.io/name": "ocellus-trainer", "ocellus.dev/kind": "TrainingJob", "ocellus.dev/name": "shapes",
    });
    let mut job_labels = labels.clone();
    job_labels["kueue.x-k8s.io/queue-name"] = json!("team-a-queue");
    let secret = |k: &str| json!({"name": k, "valueFrom": {"secretKeyRef": {"name": "ocellus-s3", "key": k}}});
    assert_eq!(
        job,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "shapes-1", "namespace": "team-a", "labels": job_labels,
                         "ownerReferences": [serde_json::to_value(owner()).expect("owner")]},
            "spec": {
                "backoffLimit": 0, "completions": 1, "parallelism": 1, "activeDeadlineSeconds": 3600, "suspend": true,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never", "automountServiceAccountToken": false, "enableServiceLinks": false,
                        "priorityClassName": "high", "terminationGracePeriodSeconds": 300,
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]}}},
                        "volumes": [{"name": "scratch", "emptyDir": {}}],
                        "containers": [{
                            "name": "trainer", "image": "ghcr.io/ocellus-dev/ocellus-trainer:1.0", "imagePullPolicy": "IfNotPresent",
                            "args": ["train", "--epochs=3"],
                            "env": [
                                {"name": "OCELLUS_S3_ENDPOINT", "value": "http://127.0.0.1:9000"},
                                {"name": "OCELLUS_S3_REGION", "value": "us-east-1"},
                                {"name": "OCELLUS_S3_BUCKET", "value": "platform"},
                                {"name": "OCELLUS_S3_FORCE_PATH_STYLE", "value": "true"},
                                secret("AWS_ACCESS_KEY_ID"), secret("AWS_SECRET_ACCESS_KEY"),
                                {"name": "OCELLUS_LOG_FORMAT", "value": "json"},
                            ],
                            "resources": {"limits": {"nvidia.com/gpu": "2"}},
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                        }],
                    },
                },
            },
        })
    );
}

#[test]
fn a_cpu_job_gets_no_gpu_placement_and_mig_asks_for_slices() {
    let mut req = JobRequest {
        name: "x-1".into(),
        namespace: "n".into(),
        owner: owner(),
        component: "train",
        ..Default::default()
    };
    let cpu = job(&cfg(), &req);
    let pod = cpu.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod");
    assert!(pod.tolerations.is_none() && pod.affinity.is_none() && pod.node_selector.is_none());
    assert_eq!(cpu.spec.as_ref().and_then(|s| s.suspend), None, "no queue: starts at once");
    req.gpu = Some(GpuRequest { count: 1, product: None, mig_profile: Some("1g.10gb".into()) });
    req.scheduling.tolerations =
        vec![Toleration { key: Some("pool".into()), operator: Some("Exists".into()), ..Default::default() }];
    let mig = job(&cfg(), &req);
    let pod = mig.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("pod");
    let limits = pod.containers[0].resources.clone().and_then(|r| r.limits).expect("limits");
    assert_eq!(limits.get("nvidia.com/mig-1g.10gb"), Some(&Quantity("1".into())));
    assert_eq!(pod.tolerations.map(|t| t.len()), Some(2), "the spec's and the chart's GPU toleration");
}

#[test]
fn job_names_fit_a_label_value() {
    assert_eq!(job_name("shapes", "1"), "shapes-1");
    let long = "a".repeat(80);
    let n = job_name(&long, "ingest-0123abcd");
    assert!(n.len() <= MAX_JOB_NAME && n.ends_with("-ingest-0123abcd"), "{n}");
}

fn pod(status: PodStatus) -> Pod {
    Pod { status: Some(status), ..Default::default() }
}

fn container(state: ContainerState) -> Option<Vec<ContainerStatus>> {
    Some(vec![ContainerStatus { name: "trainer".into(), state: Some(state), ..Default::default() }])
}

fn terminated(code: i32, reason: &str, message: Option<&str>) -> PodStatus {
    PodStatus {
        phase: Some(if code == 0 { "Succeeded" } else { "Failed" }.into()),
        container_statuses: container(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                message: message.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn run_states_and_pod_causes() {
    let job = Job::default();
    assert_eq!(observe(None, &[]), RunState::Missing);
    assert_eq!(observe(Some(&job), &[]), RunState::Pending { cause: None });

    let unschedulable = pod(PodStatus {
        phase: Some("Pending".into()),
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    assert_eq!(
        observe(Some(&job), &[&unschedulable]),
        RunState::Pending {
            cause: Some(PodCause {
                reason: "Unschedulable".into(),
                message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()
            })
        }
    );
    let pull = pod(PodStatus {
        phase: Some("Pending".into()),
        container_statuses: container(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("back-off pulling".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(
        matches!(observe(Some(&job), &[&pull]), RunState::Pending { cause: Some(PodCause { reason, .. }) } if reason == "ImagePull")
    );

    assert_eq!(observe(Some(&job), &[&pod(terminated(0, "Completed", None))]), RunState::Succeeded);
    assert_eq!(observe(Some(&job), &[&pod(terminated(4, "Error", None))]), RunState::Paused);

    let invalid = terminated(
        2,
        "Error",
        Some(
            "{\"event\":\"progress\"}\n{\"event\":\"error\",\"reason\":\"ManifestNotFound\",\"message\":\"s3://b/m does not exist\"}",
        ),
    );
    assert_eq!(
        observe(Some(&job), &[&pod(invalid)]),
        RunState::Failed(RunFailure {
            failure: Failure {
                reason: Some("ManifestNotFound".into()),
                message: Some("s3://b/m does not exist".into()),
                exit_code: Some(2),
                pod_cause: None
            },
            retryable: false,
        })
    );
    let killed = terminated(137, "Error", Some("{\"event\":\"epoch\"}"));
    let RunState::Failed(f) = observe(Some(&job), &[&pod(killed)]) else { panic!("killed is a failure") };
    assert!(f.retryable);
    assert_eq!(f.failure.exit_code, Some(137));
    assert_eq!(f.failure.message.as_deref(), Some("the trainer killed (SIGKILL): {\"event\":\"epoch\"}"));
    let oom = terminated(137, "OOMKilled", None);
    let RunState::Failed(f) = observe(Some(&job), &[&pod(oom)]) else { panic!("OOM is a failure") };
    assert_eq!(f.failure.pod_cause.as_deref(), Some("OOMKilled"));
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(backoff(1).as_secs(), 10);
    assert_eq!(backoff(2).as_secs(), 20);
    assert_eq!(backoff(3).as_secs(), 40);
    assert_eq!(backoff(20).as_secs(), 300);
}
