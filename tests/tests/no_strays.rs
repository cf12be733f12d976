//! Nothing the local cluster starts outlives it: not after a clean stop, and not after the
//! process running it is killed outright.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocellus_tests::proc::processes_with_marker;

/// Starts `ocellus-localcluster` with one running server pod; returns the process and cluster id.
fn start_cluster_with_a_pod(dir: &std::path::Path) -> (std::process::Child, String) {
    let map = dir.join("images.yaml");
    std::fs::write(
        &map,
        format!(
            "images:\n  - image: ocellus.dev/testserver\n    binary: {}\n",
            env!("CARGO_BIN_EXE_ocellus-testserver")
        ),
    )
    .expect("map");
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocellus-localcluster"))
        .args([
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--image-map",
            &map.display().to_string(),
            "--gpus",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ocellus-localcluster");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    // Keep draining stdout so the cluster can report its shutdown.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let id = line
        .trim()
        .rsplit("(cluster ")
        .next()
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .to_string();
    let pod = dir.join("pod.yaml");
    std::fs::write(&pod, "apiVersion: v1\nkind: Pod\nmetadata: {name: srv}\nspec:\n  containers:\n  - name: srv\n    image: ocellus.dev/testserver\n    env:\n    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: LISTEN, value: \"$(POD_IP):8080\"}\n").expect("pod");
    let kubectl = ocellus_tests::require_tool("kubectl");
    let kc = kubeconfig.display().to_string();
    let ok = Command::new(&kubectl)
        .args(["--kubeconfig", &kc, "apply", "-f", &pod.display().to_string()])
        .status()
        .expect("kubectl");
    assert!(ok.success());
    let ok = Command::new(&kubectl)
        .args(["--kubeconfig", &kc, "wait", "--for=condition=Ready", "pod/srv", "--timeout=60s"])
        .status()
        .expect("kubectl wait");
    assert!(ok.success());
    // etcd, apiserver, controller-manager, scheduler and the pod's process.
    let n = processes_with_marker(&id).len();
    assert!(n >= 5, "expected the control plane and a pod process, found {n}");
    (child, id)
}

fn assert_no_strays(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = processes_with_marker(id);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " "))
                .collect();
            panic!("processes left running: {names:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ocellus-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn clean_stop_leaves_no_process() {
    let dir = tempdir("clean-stop");
    let (mut child, id) = start_cluster_with_a_pod(&dir);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st}");
    assert_no_strays(&id);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn killed_harness_leaves_no_process() {
    let dir = tempdir("killed");
    let (mut child, id) = start_cluster_with_a_pod(&dir);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_no_strays(&id);
    let _ = std::fs::remove_dir_all(dir);
}
