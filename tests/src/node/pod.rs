//! One task per pod: starts its containers as processes, restarts them per `restartPolicy`,
//! runs readiness probes, enforces `activeDeadlineSeconds`, reports status like the kubelet,
//! and handles graceful deletion.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::spec::{self, ContainerOutcome, StartError};
use super::{Ctx, logs};
use crate::proc::{self, MARKER_ENV, Spec};

const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

enum State {
    Waiting {
        reason: String,
        message: String,
        retry_at: Instant,
    },
    Running {
        child: Child,
        started: String,
    },
    Terminated {
        code: i32,
        reason: String,
        message: Option<String>,
        started: String,
        finished: String,
        restart_at: Option<Instant>,
    },
}

struct Ctr {
    spec: Container,
    state: State,
    restarts: i32,
    last: Option<Value>,
    ready: bool,
    probe_ok: i32,
    probe_fail: i32,
    next_probe: Instant,
    started_at: Option<Instant>,
    /// Log file of the current (or last) start.
    log: Option<PathBuf>,
    /// Resolves once that start's output is all in its log file.
    log_drained: Option<oneshot::Receiver<()>>,
}

fn now() -> String {
    Timestamp::now().to_string()
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9))
}

/// Runs one pod until it is deleted or the node shuts down.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut pod: Pod,
    mut updates: watch::Receiver<Option<Pod>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let dir = ctx.cfg.root.join("pods").join(format!("{ns}_{name}_{uid}"));
    let _ = std::fs::create_dir_all(&dir);
    let ip = ctx.alloc_ip();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut ctrs: Vec<Ctr> = spec
        .containers
        .iter()
        .map(|c| Ctr {
            spec: c.clone(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
                retry_at: Instant::now(),
            },
            restarts: 0,
            last: None,
            ready: false,
            probe_ok: 0,
            probe_fail: 0,
            next_probe: Instant::now(),
            started_at: None,
            log: None,
            log_drained: None,
        })
        .collect();
    let start_time = now();
    let started = Instant::now();
    let mut last_sent: Option<Value> = None;
    let mut terminal: Option<(&'static str, Option<(&'static str, String)>)> = None;
    let mut ready_since = now();
    let mut was_ready = false;

    loop {
        let stopping = *shutdown.borrow();
        if stopping {
            stop_all(&mut ctrs, Duration::from_secs(2)).await;
            break;
        }
        // Always read the latest version: `changed()` in the select below marks it as seen.
        let latest = updates.borrow_and_update().clone();
        match latest {
            Some(p) => pod = p,
            None => {
                stop_all(&mut ctrs, Duration::from_secs(0)).await;
                break;
            }
        }
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
            stop_all(&mut ctrs, Duration::from_secs(grace)).await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..Default::default()
            };
            if let Err(e) = api.delete(&name, &dp).await {
                tracing::debug!(pod = %name, error = %e, "final delete");
            }
            break;
        }

        if terminal.is_none() {
            // activeDeadlineSeconds counts from the pod's start on this node.
            if let Some(deadline) = spec.active_deadline_seconds
                && started.elapsed() >= Duration::from_secs(deadline.max(0) as u64)
            {
                stop_all(&mut ctrs, Duration::from_secs(0)).await;
                terminal = Some((
                    "Failed",
                    Some(("DeadlineExceeded", "Pod was active on the node longer than the specified deadline".into())),
                ));
            }
        }
        if terminal.is_none() {
            for c in ctrs.iter_mut() {
                step_container(&ctx, &pod, &dir, &ip, &policy, c).await;
            }
            let outcomes: Vec<ContainerOutcome> = ctrs
                .iter()
                .map(|c| match &c.state {
                    State::Terminated { code, restart_at: None, .. } => ContainerOutcome::Done(*code),
                    _ => ContainerOutcome::Active,
                })
                .collect();
            let phase = spec::pod_phase(ctrs.iter().any(|c| c.started_at.is_some()), &outcomes);
            if phase == "Succeeded" || phase == "Failed" {
                terminal = Some((if phase == "Succeeded" { "Succeeded" } else { "Failed" }, None));
            }
        }

        let all_ready = terminal.is_none() && ctrs.iter().all(|c| c.ready);
        if all_ready != was_ready {
            ready_since = now();
            was_ready = all_ready;
        }
        let phase = match terminal {
            Some((p, _)) => p,
            None => spec::pod_phase(ctrs.iter().any(|c| c.started_at.is_some()), &[ContainerOutcome::Active]),
        };
        let status = pod_status(
            &ctrs,
            phase,
            terminal.as_ref().and_then(|t| t.1.clone()),
            &ip,
            &start_time,
            all_ready,
            &ready_since,
        );
        if last_sent.as_ref() != Some(&status) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(json!({"status": status.clone()})))
                .await
            {
                Ok(_) => last_sent = Some(status),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    stop_all(&mut ctrs, Duration::from_secs(0)).await;
                    break;
                }
                Err(e) => tracing::debug!(pod = %name, error = %e, "status update failed; retrying"),
            }
        }

        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = updates.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
    for c in &ctrs {
        ctx.logs.finish(&ns, &name, &c.spec.name);
    }
    ctx.release_ip(&ip);
}

async fn stop_all(ctrs: &mut [Ctr], grace: Duration) {
    let mut handles = vec![];
    for c in ctrs.iter_mut() {
        if let State::Running { .. } = c.state {
            let old = std::mem::replace(
                &mut c.state,
                State::Waiting { reason: "Terminating".into(), message: String::new(), retry_at: Instant::now() },
            );
            if let State::Running { mut child, started } = old {
                handles.push((c, tokio::task::spawn_blocking(move || (proc::stop(&mut child, grace), started))));
            }
        }
    }
    for (c, h) in handles {
        if let Ok((st, started)) = h.await {
            drained(&mut c.log_drained).await;
            let code = st.map(exit_code).unwrap_or(137);
            c.state = State::Terminated {
                code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: termination_message(&c.spec, c.log.as_deref(), code),
                started,
                finished: now(),
                restart_at: None,
            };
        }
        c.ready = false;
    }
}

async fn step_container(ctx: &Ctx, pod: &Pod, dir: &std::path::Path, ip: &str, policy: &str, c: &mut Ctr) {
    let ns = pod.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    match &mut c.state {
        State::Waiting { retry_at, .. } if Instant::now() >= *retry_at => {
            match start(ctx, pod, dir, ip, c).await {
                Ok((child, log, log_drained)) => {
                    c.log = Some(log);
                    c.log_drained = Some(log_drained);
                    c.state = State::Running { child, started: now() };
                    c.started_at = Some(Instant::now());
                    c.probe_ok = 0;
                    c.probe_fail = 0;
                    let delay = c.spec.readiness_probe.as_ref().and_then(|p| p.initial_delay_seconds).unwrap_or(0);
                    c.next_probe = Instant::now() + Duration::from_secs(delay.max(0) as u64);
                    c.ready = c.spec.readiness_probe.is_none();
                }
                Err(e) => {
                    c.state = State::Waiting {
                        reason: e.reason.into(),
                        message: e.message,
                        retry_at: Instant::now() + Duration::from_secs(2),
                    };
                    c.started_at.get_or_insert(Instant::now());
                    // An image that cannot be mapped will never start: fail pods that do not restart.
                    if e.reason != "CreateContainerConfigError" && policy == "Never" {
                        c.state = State::Terminated {
                            code: 128,
                            reason: "StartError".into(),
                            message: None,
                            started: now(),
                            finished: now(),
                            restart_at: None,
                        };
                    }
                }
            }
        }
        State::Running { child, started } => {
            if let Ok(Some(st)) = child.try_wait() {
                proc::signal_group(child.id(), proc::ffi::SIGKILL);
                drained(&mut c.log_drained).await;
                let code = exit_code(st);
                let restart = spec::should_restart(policy, code);
                c.restarts += i32::from(restart);
                c.state = State::Terminated {
                    code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    message: termination_message(&c.spec, c.log.as_deref(), code),
                    started: started.clone(),
                    finished: now(),
                    restart_at: restart
                        .then(|| Instant::now() + spec::backoff(c.restarts.max(1)) / if code == 0 { 10 } else { 1 }),
                };
                c.ready = false;
                ctx.logs.finish(&ns, &pod_name, &c.spec.name);
            } else if let Some(probe) = c.spec.readiness_probe.clone()
                && Instant::now() >= c.next_probe
            {
                c.next_probe = Instant::now() + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
                let ok = run_probe(&probe, ip, &c.spec).await;
                if ok {
                    c.probe_ok += 1;
                    c.probe_fail = 0;
                    if c.probe_ok >= probe.success_threshold.unwrap_or(1) {
                        c.ready = true;
                    }
                } else {
                    c.probe_fail += 1;
                    c.probe_ok = 0;
                    if c.probe_fail >= probe.failure_threshold.unwrap_or(3) {
                        c.ready = false;
                    }
                }
            }
        }
        State::Terminated { restart_at: Some(at), code, reason, message, started, finished }
            if Instant::now() >= *at =>
        {
            c.last = Some(terminated_json(*code, reason, message, started, finished));
            c.state =
                State::Waiting { reason: "ContainerCreating".into(), message: String::new(), retry_at: Instant::now() };
        }
        _ => {}
    }
}

async fn run_probe(probe: &Probe, ip: &str, c: &Container) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| -> Option<i32> {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        match p {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => {
                c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(name)).map(|cp| cp.container_port)
            }
        }
    };
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port) else { return false };
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let url = format!("{scheme}://{ip}:{port}{}", h.path.as_deref().unwrap_or("/"));
        let Ok(client) = reqwest::Client::builder().timeout(timeout).danger_accept_invalid_certs(true).build() else {
            return false;
        };
        return client.get(url).send().await.is_ok_and(|r| r.status().as_u16() >= 200 && r.status().as_u16() < 400);
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port) else { return false };
        return tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port as u16)))
            .await
            .is_ok_and(|r| r.is_ok());
    }
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let Some((prog, args)) = cmd.split_first() else { return false };
        let run = tokio::process::Command::new(prog).args(args).kill_on_drop(true).status();
        return tokio::time::timeout(timeout, run).await.is_ok_and(|r| r.is_ok_and(|s| s.success()));
    }
    true
}

/// The container's `/tmp` as TMPDIR: the pod's emptyDir volume when one is mounted there (shared
/// by the pod's containers, as a kubelet mounts it), else the container's own, as its image's
/// filesystem would be. Never the host's `/tmp`: concurrent pods must not share scratch files.
fn tmp_dir(pod: &Pod, spec: &Container, dir: &std::path::Path) -> PathBuf {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    let empty_dir = spec
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_path.trim_end_matches('/') == "/tmp")
        .find(|m| volumes.iter().any(|v| v.name == m.name && v.empty_dir.is_some()));
    let tmp = match empty_dir {
        Some(m) => dir.join("volumes").join(&m.name),
        None => dir.join("tmp").join(&spec.name),
    };
    let _ = std::fs::create_dir_all(&tmp);
    tmp
}

/// Resolves env, argv and working dir, then spawns the container's process and records its
/// output into a new log file (the receiver resolves once all of it is recorded).
async fn start(
    ctx: &Ctx,
    pod: &Pod,
    dir: &std::path::Path,
    ip: &str,
    c: &Ctr,
) -> Result<(Child, PathBuf, oneshot::Receiver<()>), StartError> {
    let ns = pod.namespace().unwrap_or_default();
    let spec = &c.spec;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()));
    vars.insert("HOME".into(), dir.display().to_string());
    vars.insert("HOSTNAME".into(), pod.name_any());
    vars.insert("TMPDIR".into(), tmp_dir(pod, spec, dir).display().to_string());
    let port = ctx.cfg.api_server.rsplit(':').next().unwrap_or("443").to_string();
    vars.insert("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into());
    vars.insert("KUBERNETES_SERVICE_PORT".into(), port);
    vars.insert(MARKER_ENV.into(), ctx.cfg.marker.clone());
    if let Some(m) = ctx.cfg.images.resolve(spec.image.as_deref().unwrap_or("")) {
        vars.extend(m.env.clone());
    }

    let config_err = |m: String| StartError { reason: "CreateContainerConfigError", message: m };
    for from in spec.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match get_config_map(ctx, &ns, &r.name).await {
                Some(cm) => {
                    vars.extend(cm.data.unwrap_or_default().into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if r.optional == Some(true) => {}
                None => return Err(config_err(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match get_secret(ctx, &ns, &r.name).await {
                Some(s) => vars.extend(
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned())),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(config_err(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in spec.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(spec::expand(v, &vars))
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                Some(
                    field_value(pod, &f.field_path, ip)
                        .ok_or_else(|| config_err(format!("unsupported fieldRef {:?}", f.field_path)))?,
                )
            } else if let Some(r) = &src.secret_key_ref {
                let v = get_secret(ctx, &ns, &r.name).await.and_then(|s| {
                    s.data.unwrap_or_default().get(&r.key).map(|b| String::from_utf8_lossy(&b.0).into_owned())
                });
                match v {
                    Some(v) => Some(v),
                    None if r.optional == Some(true) => None,
                    None => return Err(config_err(format!("couldn't find key {} in Secret {}/{}", r.key, ns, r.name))),
                }
            } else if let Some(r) = &src.config_map_key_ref {
                let v = get_config_map(ctx, &ns, &r.name)
                    .await
                    .and_then(|cm| cm.data.unwrap_or_default().get(&r.key).cloned());
                match v {
                    Some(v) => Some(v),
                    None if r.optional == Some(true) => None,
                    None => {
                        return Err(config_err(format!("couldn't find key {} in ConfigMap {}/{}", r.key, ns, r.name)));
                    }
                }
            } else if let Some(r) = &src.resource_field_ref {
                let res = spec.resources.clone().unwrap_or_default();
                let (kind, name) = r.resource.split_once('.').unwrap_or(("limits", "cpu"));
                let map = if kind == "requests" { res.requests } else { res.limits };
                Some(map.and_then(|m| m.get(name).map(|q| q.0.clone())).unwrap_or_else(|| "0".into()))
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            vars.insert(e.name.clone(), spec::pod_local(&v, ip));
        }
    }
    // The pod's ServiceAccount token, as a kubeconfig: clients that honour KUBECONFIG act as the pod.
    if spec.volume_mounts.iter().flatten().any(|m| m.mount_path == SA_MOUNT) {
        let sa_volume = spec.volume_mounts.iter().flatten().find(|m| m.mount_path == SA_MOUNT).map(|m| m.name.clone());
        let secret_name = pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).and_then(|vols| {
            vols.iter()
                .find(|v| Some(&v.name) == sa_volume.as_ref())
                .and_then(|v| v.secret.as_ref()?.secret_name.clone())
        });
        if let Some(secret_name) = secret_name {
            let token = get_secret(ctx, &ns, &secret_name)
                .await
                .and_then(|s| s.data?.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()));
            let Some(token) = token else {
                return Err(config_err(format!("service account token secret {secret_name:?} not found")));
            };
            let kc = dir.join("kubeconfig");
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {ns}}}\ncurrent-context: c\n",
                ctx.cfg.api_server,
                dir.join("ca.crt").display()
            );
            std::fs::write(dir.join("ca.crt"), &ctx.cfg.ca_pem)
                .and_then(|_| std::fs::write(&kc, text))
                .map_err(|e| config_err(e.to_string()))?;
            vars.insert("KUBECONFIG".into(), kc.display().to_string());
        }
    }

    let argv: Vec<String> = spec::argv(
        &ctx.cfg.images,
        spec.image.as_deref().unwrap_or(""),
        spec.command.as_deref().unwrap_or(&[]),
        spec.args.as_deref().unwrap_or(&[]),
        &vars,
    )?
    .iter()
    .map(|a| spec::pod_local(a, ip))
    .collect();
    let cwd = spec
        .working_dir
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(|| dir.join(&spec.name));
    let _ = std::fs::create_dir_all(&cwd);
    let log = ctx.logs.new_log(&ns, &pod.name_any(), &spec.name, dir, c.restarts);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| StartError { reason: "CreateContainerError", message: "empty command".into() })?;
    let (child, pipe) = proc::spawn_piped(Spec {
        program: program.into(),
        args: args.to_vec(),
        env: vars,
        clear_env: true,
        cwd: Some(cwd),
        log: None,
    })
    .map_err(|e| StartError { reason: "RunContainerError", message: format!("starting {program:?}: {e}") })?;
    match logs::capture(pipe, &log) {
        Ok(log_drained) => Ok((child, log, log_drained)),
        Err(e) => {
            let mut child = child;
            proc::stop(&mut child, Duration::ZERO);
            Err(StartError {
                reason: "RunContainerError",
                message: format!("recording the output of {program:?}: {e}"),
            })
        }
    }
}

/// Waits until the output of a container's last start is all in its log file (its termination
/// message is read from there), or 2 s at most: a process that escaped its group may hold the
/// pipe open for longer.
async fn drained(log: &mut Option<oneshot::Receiver<()>>) {
    if let Some(rx) = log.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
    }
}

fn field_value(pod: &Pod, path: &str, ip: &str) -> Option<String> {
    let m = &pod.metadata;
    let s = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone()?,
        "metadata.uid" => m.uid.clone()?,
        "spec.nodeName" => s?.node_name.clone()?,
        "spec.serviceAccountName" => s?.service_account_name.clone().unwrap_or_else(|| "default".into()),
        "status.podIP" => ip.to_string(),
        "status.hostIP" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels['") => {
            m.labels.as_ref()?.get(p.strip_prefix("metadata.labels['")?.strip_suffix("']")?).cloned()?
        }
        p if p.starts_with("metadata.annotations['") => {
            m.annotations.as_ref()?.get(p.strip_prefix("metadata.annotations['")?.strip_suffix("']")?).cloned()?
        }
        _ => return None,
    })
}

async fn get_secret(ctx: &Ctx, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(name).await.ok().flatten()
}

async fn get_config_map(ctx: &Ctx, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns).get_opt(name).await.ok().flatten()
}

fn terminated_json(code: i32, reason: &str, message: &Option<String>, started: &str, finished: &str) -> Value {
    let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished});
    if let Some(m) = message {
        t["message"] = json!(m);
    }
    json!({ "terminated": t })
}

/// The kubelet's termination message for `terminationMessagePolicy: FallbackToLogsOnError`: on a
/// non-zero exit, the last 80 lines of the log, at most 2048 bytes. (The node has no mounts, so
/// a `terminationMessagePath` file is never read; containers that need a message on success
/// cannot get one here.)
fn termination_message(spec: &Container, log: Option<&std::path::Path>, code: i32) -> Option<String> {
    if code == 0 || spec.termination_message_policy.as_deref() != Some("FallbackToLogsOnError") {
        return None;
    }
    let text = logs::plain(&std::fs::read(log?).ok()?);
    Some(spec::log_tail(&text, 80, 2048)).filter(|m| !m.is_empty())
}

fn pod_status(
    ctrs: &[Ctr],
    phase: &str,
    reason: Option<(&str, String)>,
    ip: &str,
    start_time: &str,
    ready: bool,
    ready_since: &str,
) -> Value {
    let statuses: Vec<Value> = ctrs
        .iter()
        .map(|c| {
            let state = match &c.state {
                State::Waiting { reason, message, .. } => json!({"waiting": {"reason": reason, "message": message}}),
                State::Running { started, .. } => json!({"running": {"startedAt": started}}),
                State::Terminated { restart_at: Some(_), .. } => json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}),
                State::Terminated { code, reason, message, started, finished, .. } => {
                    terminated_json(*code, reason, message, started, finished)
                }
            };
            let last = match &c.state {
                State::Terminated { restart_at: Some(_), code, reason, message, started, finished } => {
                    Some(terminated_json(*code, reason, message, started, finished))
                }
                _ => c.last.clone(),
            };
            let mut s = json!({
                "name": c.spec.name,
                "image": c.spec.image.clone().unwrap_or_default(),
                "imageID": format!("local://{}", c.spec.image.clone().unwrap_or_default()),
                "ready": c.ready,
                "started": matches!(c.state, State::Running { .. }),
                "restartCount": c.restarts,
                "state": state,
            });
            if let State::Running { child, .. } = &c.state {
                s["containerID"] = json!(format!("process://{}", child.id()));
            }
            if let Some(l) = last {
                s["lastState"] = l;
            }
            s
        })
        .collect();
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": ready_since});
    let mut status = json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start_time,
        "qosClass": "BestEffort",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": start_time},
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ],
        "containerStatuses": statuses,
    });
    if let Some((r, m)) = reason {
        status["reason"] = json!(r);
        status["message"] = json!(m);
    }
    status
}
