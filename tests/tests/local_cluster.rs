//! The local cluster: a real control plane and the process-running node.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client, ResourceExt};
use ocellus_tests::cluster::{ClusterOptions, LocalCluster};
use ocellus_tests::eventually;
use ocellus_tests::node::{ImageMap, ImageMapping};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let images = ImageMap {
            images: vec![
                ImageMapping {
                    image: "ocellus.dev/testserver".into(),
                    binary: Some(env!("CARGO_BIN_EXE_ocellus-testserver").into()),
                    env: Default::default(),
                },
                ImageMapping { image: "busybox".into(), binary: None, env: Default::default() },
            ],
        };
        LocalCluster::start(ClusterOptions {
            gpus: Some(2),
            gpu_product: Some("NVIDIA-Test-GPU".into()),
            images,
            ..Default::default()
        })
        .expect("local cluster starts")
    })
}

/// Runs a test body with a fresh client and namespace on the cluster's runtime.
fn with_ns<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let c = cluster();
    c.block_on(async {
        let client = c.client().await.expect("client");
        let ns = c.namespace(&client, prefix).await.expect("namespace");
        body(client.clone(), ns.clone()).await;
        c.delete_namespace(&client, &ns).await;
    });
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn server_container(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": "ocellus.dev/testserver:latest",
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LISTEN", "value": "$(POD_IP):8080"},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    })
}

async fn pod_phase(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get_opt(name).await.ok().flatten().and_then(|p| p.status?.phase)
}

#[test]
fn node_registers_with_capacity_and_labels() {
    with_ns("node", |client, _| async move {
        let node = Api::<Node>::all(client).get("local-node").await.expect("node");
        let labels = node.labels();
        assert_eq!(labels.get("nvidia.com/gpu.product").map(String::as_str), Some("NVIDIA-Test-GPU"));
        assert_eq!(labels.get("kubernetes.io/os").map(String::as_str), Some("linux"));
        let cap = node.status.as_ref().and_then(|s| s.capacity.clone()).expect("capacity");
        assert_eq!(cap["nvidia.com/gpu"].0, "2");
        for r in ["cpu", "memory", "pods"] {
            assert!(cap.contains_key(r), "{r}");
        }
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
    });
}

#[test]
fn deployment_scales_to_three_ready_replicas_with_distinct_ips_answering_http() {
    with_ns("deploy", |client, ns| async move {
        let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let dep: Deployment = obj(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [server_container("srv")]}},
            },
        }));
        deps.create(&PostParams::default(), &dep).await.expect("create deployment");
        let svc: k8s_openapi::api::core::v1::Service = obj(
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": "http"}]}}),
        );
        Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &svc).await.expect("create service");

        eventually("3 ready replicas", WAIT, || async {
            let d = deps.get("web").await.ok()?;
            (d.status?.ready_replicas? == 3).then_some(())
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let list = pods.list(&Default::default()).await.expect("pods");
        let mut ips: Vec<String> = list.items.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 3, "distinct pod IPs: {ips:?}");
        // Each pod answers on its own IP with its own name.
        let http = reqwest::Client::new();
        for p in &list.items {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("ip");
            let body: serde_json::Value =
                http.get(format!("http://{ip}:8080/")).send().await.expect("GET").json().await.expect("json");
            assert_eq!(body["pod"], p.name_any());
        }
        // The EndpointSlice controller publishes the three ready addresses (1.20 serves v1beta1).
        let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
        eventually("3 ready endpoints", WAIT, || async {
            let l = slices.list(&Default::default()).await.ok()?;
            let ready: Vec<String> = l
                .items
                .iter()
                .flat_map(|s| s.data["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .filter_map(|e| e["addresses"][0].as_str().map(String::from))
                .collect();
            let mut ready = ready;
            ready.sort();
            (ready == ips).then_some(())
        })
        .await;

        // Scaling down stops the surplus processes.
        deps.patch("web", &Default::default(), &kube::api::Patch::Merge(json!({"spec": {"replicas": 1}})))
            .await
            .expect("scale");
        eventually("1 pod left", WAIT, || async {
            (pods.list(&Default::default()).await.ok()?.items.len() == 1).then_some(())
        })
        .await;
    });
}

fn job(name: &str, script: &str) -> Job {
    obj(json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}},
        },
    }))
}

#[test]
fn jobs_complete_and_failures_report_exit_codes() {
    with_ns("jobs", |client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        jobs.create(&PostParams::default(), &job("ok", "echo done")).await.expect("create");
        jobs.create(&PostParams::default(), &job("bad", "echo failing >&2; exit 3")).await.expect("create");
        eventually("job ok succeeded", WAIT, || async {
            (jobs.get("ok").await.ok()?.status?.succeeded? == 1).then_some(())
        })
        .await;
        let reason = eventually("job bad failed", WAIT, || async {
            let conds = jobs.get("bad").await.ok()?.status?.conditions?;
            conds.into_iter().find(|c| c.type_ == "Failed" && c.status == "True").and_then(|c| c.reason)
        })
        .await;
        assert_eq!(reason, "BackoffLimitExceeded");
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let pod =
            pods.list(&kube::api::ListParams::default().labels("job-name=bad")).await.expect("list").items.remove(0);
        let status = pod.status.expect("status");
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let term = status.container_statuses.expect("statuses")[0]
            .state
            .clone()
            .and_then(|s| s.terminated)
            .expect("terminated");
        assert_eq!(term.exit_code, 3);
        assert_eq!(term.reason.as_deref(), Some("Error"));
    });
}

#[test]
fn deleting_a_pod_stops_its_process_gracefully() {
    with_ns("delete", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = obj(
            json!({"metadata": {"name": "srv"}, "spec": {"containers": [server_container("srv")], "terminationGracePeriodSeconds": 10}}),
        );
        pods.create(&PostParams::default(), &pod).await.expect("create");
        let pid: u32 = eventually("running with a pid", WAIT, || async {
            let p = pods.get("srv").await.ok()?;
            let id = p.status?.container_statuses?.first()?.container_id.clone()?;
            id.strip_prefix("process://")?.parse().ok()
        })
        .await;
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        pods.delete("srv", &DeleteParams::default()).await.expect("delete");
        eventually("pod gone", WAIT, || async { pods.get_opt("srv").await.ok()?.is_none().then_some(()) }).await;
        let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains("ocellus-testserver"))
            .unwrap_or(false);
        assert!(!alive, "process {pid} still running after its pod was deleted");
    });
}

#[test]
fn kubectl_logs_returns_container_output() {
    with_ns("logs", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = obj(json!({"metadata": {"name": "talker"}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox", "command": ["sh", "-c", "echo line-one; echo line-two >&2; echo line-three"],
        }]}}));
        pods.create(&PostParams::default(), &pod).await.expect("create");
        eventually("pod succeeded", WAIT, || async {
            (pod_phase(&pods, "talker").await? == "Succeeded").then_some(())
        })
        .await;
        let kubectl = ocellus_tests::require_tool("kubectl");
        let out = std::process::Command::new(&kubectl)
            .args(["--kubeconfig", &cluster().kubeconfig().display().to_string(), "-n", &ns, "logs", "talker"])
            .output()
            .expect("kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().collect::<Vec<_>>(), ["line-one", "line-two", "line-three"]);
        let out = std::process::Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &cluster().kubeconfig().display().to_string(),
                "-n",
                &ns,
                "logs",
                "talker",
                "--tail=1",
            ])
            .output()
            .expect("kubectl");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "line-three");
    });
}

/// Each container's `/tmp` is its own, or its pod's when an emptyDir is mounted there: never
/// the host's, which concurrent trainer pods would share.
#[test]
fn containers_get_their_own_tmp_or_their_pods_empty_dir() {
    with_ns("tmp", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let ctr = |name: &str, mount: bool| {
            let mut c = json!({"name": name, "image": "busybox", "command": ["sh", "-c", "touch \"$TMPDIR/$HOSTNAME\" && echo \"$TMPDIR\""]});
            if mount {
                c["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/tmp"}]);
            }
            c
        };
        let pod: Pod = obj(json!({"metadata": {"name": "scratch"}, "spec": {"restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [ctr("a", true), ctr("b", true), ctr("c", false)]}}));
        pods.create(&PostParams::default(), &pod).await.expect("create");
        eventually("pod succeeded", WAIT, || async {
            (pod_phase(&pods, "scratch").await? == "Succeeded").then_some(())
        })
        .await;
        let mut tmp = std::collections::BTreeMap::new();
        for c in ["a", "b", "c"] {
            let out = cluster().kubectl(&["-n", &ns, "logs", "scratch", "-c", c]);
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(out.status.success() && dir.starts_with('/') && dir != "/tmp", "{c}: {dir:?}");
            tmp.insert(c, dir);
        }
        assert_eq!(tmp["a"], tmp["b"], "the emptyDir at /tmp is the pod's");
        assert_ne!(tmp["a"], tmp["c"], "a container without the mount has its own /tmp");
    });
}

#[test]
fn gpu_requests_are_scheduled_against_capacity() {
    with_ns("gpu", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let gpu_pod = |name: &str, n: u32| -> Pod {
            obj(json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "busybox", "command": ["sh", "-c", "sleep 30"],
                "resources": {"limits": {"nvidia.com/gpu": n.to_string()}},
            }]}}))
        };
        pods.create(&PostParams::default(), &gpu_pod("too-many", 3)).await.expect("create");
        pods.create(&PostParams::default(), &gpu_pod("fits", 2)).await.expect("create");
        eventually("fits is running", WAIT, || async { (pod_phase(&pods, "fits").await? == "Running").then_some(()) })
            .await;
        let cond = eventually("too-many unschedulable", WAIT, || async {
            let p = pods.get("too-many").await.ok()?;
            p.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .await;
        assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
        assert!(cond.message.unwrap_or_default().contains("Insufficient nvidia.com/gpu"));
        assert_eq!(pod_phase(&pods, "too-many").await.as_deref(), Some("Pending"));
        pods.delete("fits", &DeleteParams { grace_period_seconds: Some(1), ..Default::default() })
            .await
            .expect("delete");
    });
}

#[test]
fn garbage_collection_deletes_children_of_a_deleted_owner() {
    with_ns("gc", |client, ns| async move {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let owner =
            cms.create(&PostParams::default(), &obj(json!({"metadata": {"name": "owner"}}))).await.expect("owner");
        let owner_ref =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid")}]);
        cms.create(&PostParams::default(), &obj(json!({"metadata": {"name": "child", "ownerReferences": owner_ref}})))
            .await
            .expect("child");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = obj(
            json!({"metadata": {"name": "child-pod", "ownerReferences": owner_ref}, "spec": {"containers": [{
            "name": "main", "image": "busybox", "command": ["sh", "-c", "sleep 60"]}], "terminationGracePeriodSeconds": 1}}),
        );
        pods.create(&PostParams::default(), &pod).await.expect("child pod");
        eventually("child pod running", WAIT, || async {
            (pod_phase(&pods, "child-pod").await? == "Running").then_some(())
        })
        .await;
        cms.delete("owner", &DeleteParams::background()).await.expect("delete owner");
        eventually("children collected", WAIT, || async {
            (cms.get_opt("child").await.ok()?.is_none() && pods.get_opt("child-pod").await.ok()?.is_none())
                .then_some(())
        })
        .await;
    });
}

#[test]
fn restart_policy_deadline_and_env_sources() {
    with_ns("lifecycle", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(&PostParams::default(), &obj(json!({"metadata": {"name": "s"}, "stringData": {"token": "s3cr3t"}})))
            .await
            .expect("secret");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        cms.create(&PostParams::default(), &obj(json!({"metadata": {"name": "cm"}, "data": {"MODE": "fast"}})))
            .await
            .expect("cm");

        // Always: a container that exits is restarted.
        let restarts: Pod = obj(json!({"metadata": {"name": "restarts"}, "spec": {"containers": [{
            "name": "main", "image": "busybox", "command": ["sh", "-c", "echo started; exit 0"]}]}}));
        pods.create(&PostParams::default(), &restarts).await.expect("create");
        // activeDeadlineSeconds ends a long-running pod.
        let deadline: Pod = obj(
            json!({"metadata": {"name": "deadline"}, "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 2, "containers": [{
            "name": "main", "image": "busybox", "command": ["sleep", "60"]}]}}),
        );
        pods.create(&PostParams::default(), &deadline).await.expect("create");
        // Env from a Secret, a ConfigMap (envFrom) and the downward API.
        let env: Pod = obj(
            json!({"metadata": {"name": "env", "labels": {"team": "vision"}}, "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox", "command": ["sh", "-c", "echo \"$TOKEN $MODE $ME $NS $TEAM $(GREETING)\""],
            "envFrom": [{"configMapRef": {"name": "cm"}}],
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
                {"name": "GREETING", "value": "hello-$(ME)"},
            ]}]}}),
        );
        pods.create(&PostParams::default(), &env).await.expect("create");
        // A missing Secret blocks the container with CreateContainerConfigError; an unmapped image is ErrImagePull.
        let missing: Pod = obj(json!({"metadata": {"name": "missing"}, "spec": {"containers": [{
            "name": "main", "image": "busybox", "command": ["true"],
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}]}}));
        pods.create(&PostParams::default(), &missing).await.expect("create");
        let unmapped: Pod = obj(
            json!({"metadata": {"name": "unmapped"}, "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}),
        );
        pods.create(&PostParams::default(), &unmapped).await.expect("create");

        eventually("a restart", WAIT, || async {
            let n = pods.get("restarts").await.ok()?.status?.container_statuses?.first()?.restart_count;
            (n >= 1).then_some(())
        })
        .await;
        let (reason, phase) = eventually("deadline exceeded", WAIT, || async {
            let st = pods.get("deadline").await.ok()?.status?;
            st.reason.clone().map(|r| (r, st.phase.unwrap_or_default()))
        })
        .await;
        assert_eq!((reason.as_str(), phase.as_str()), ("DeadlineExceeded", "Failed"));
        eventually("env pod done", WAIT, || async { (pod_phase(&pods, "env").await? == "Succeeded").then_some(()) })
            .await;
        let logs = pods.logs("env", &Default::default()).await.expect("logs");
        assert_eq!(logs.trim(), format!("s3cr3t fast env {ns} vision hello-env"));
        for (name, want) in [("missing", "CreateContainerConfigError"), ("unmapped", "ErrImagePull")] {
            let got = eventually(name, WAIT, || async {
                pods.get(name).await.ok()?.status?.container_statuses?.first()?.state.clone()?.waiting?.reason
            })
            .await;
            assert_eq!(got, want, "{name}");
        }
    });
}
