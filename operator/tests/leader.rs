//! Leader election against a real API server (the local Kubernetes 1.20 cluster).
//!
//! One cluster serves every scenario (it takes ~20 s to start); each scenario has its own Lease.
//! Durations are short (lease 3 s, renew deadline 2 s, retry 0.5 s) so that expiries happen
//! within the test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use ocellus_common::{LogArgs, LogFormat};
use ocellus_operator::leader::{Elector, LeaseConfig};
use ocellus_tests::cluster::{ClusterOptions, LocalCluster};
use ocellus_tests::eventually;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// Campaign retries are jittered by up to a fifth.
const JITTERED_RETRY: Duration = Duration::from_millis(600);
/// Time to wait for a first acquisition (the Lease is created then).
const ACQUIRE: Duration = Duration::from_secs(20);

fn config(ns: &str, name: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: LEASE,
        renew_deadline: RENEW,
        retry_period: RETRY,
        ..LeaseConfig::new(ns, name, identity)
    }
}

async fn spec(api: &Api<Lease>, name: &str) -> LeaseSpec {
    api.get(name).await.expect("read the lease").spec.unwrap_or_default()
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Spawns `identity` and waits until it leads.
async fn leader(client: &Client, ns: &str, name: &str, identity: &str) -> Elector {
    let mut e = Elector::spawn(client.clone(), config(ns, name, identity));
    within(&format!("{identity} acquires {name}"), ACQUIRE, e.acquired()).await;
    assert!(e.is_leader());
    e
}

/// Waits until `e` leads; returns how long that took.
async fn until_leader(what: &str, limit: Duration, e: &Elector) -> Duration {
    let start = Instant::now();
    eventually(what, limit, || async { e.is_leader().then_some(()) }).await;
    start.elapsed()
}

#[test]
fn leader_election_on_a_real_api_server() {
    ocellus_common::init_tracing(&LogArgs { level: "warn,ocellus_operator=info".into(), format: LogFormat::Text });
    let cluster = LocalCluster::start(ClusterOptions { gpus: Some(0), ..Default::default() }).expect("local cluster");
    cluster.block_on(async {
        let client = cluster.client().await.expect("client");
        let ns = cluster.namespace(&client, "leader").await.expect("namespace");
        let scenario = |name: &'static str, started: Instant| {
            eprintln!("[leader] {name}: {:.1} s", started.elapsed().as_secs_f64())
        };

        let t = Instant::now();
        within("one leader", Duration::from_secs(60), exactly_one_leader(&client, &ns)).await;
        scenario("exactly one leader", t);

        let t = Instant::now();
        within("handover on crash", Duration::from_secs(60), handover_on_crash(&client, &ns)).await;
        scenario("handover on crash", t);

        let t = Instant::now();
        within("graceful release", Duration::from_secs(60), graceful_release(&client, &ns)).await;
        scenario("graceful release", t);

        let t = Instant::now();
        within("lost to another holder", Duration::from_secs(60), lost_to_another_holder(&client, &ns)).await;
        scenario("lost to another holder", t);

        let t = Instant::now();
        within("lost when unreachable", Duration::from_secs(60), lost_when_unreachable(&cluster, &client, &ns)).await;
        scenario("lost when the API server is unreachable", t);

        cluster.delete_namespace(&client, &ns).await;
    });
    // `cluster` drops here: the control plane stops.
}

/// Two candidates start together: one leads, the Lease names it, and it keeps leading (renewing)
/// while the other stays a follower for longer than a lease duration.
async fn exactly_one_leader(client: &Client, ns: &str) {
    let name = "one-leader";
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let ids = ["alpha", "beta"];
    let electors = [
        Elector::spawn(client.clone(), config(ns, name, ids[0])),
        Elector::spawn(client.clone(), config(ns, name, ids[1])),
    ];
    let all = &electors;
    let first = eventually("a leader", ACQUIRE, || async move { all.iter().position(Elector::is_leader) }).await;
    let other = 1 - first;
    let initial = spec(&api, name).await;
    assert_eq!(holder(&initial), Some(ids[first]));
    assert_eq!(initial.lease_transitions, Some(0), "created, never handed over");
    assert_eq!(initial.lease_duration_seconds, Some(3));

    // Longer than a lease duration: the leader keeps renewing and the follower never takes over.
    let until = Instant::now() + LEASE + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(electors[first].is_leader(), "{} stopped leading", ids[first]);
        assert!(!electors[other].is_leader(), "{} leads too", ids[other]);
        assert_eq!(holder(&spec(&api, name).await), Some(ids[first]));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let later = spec(&api, name).await;
    assert!(later.renew_time > initial.renew_time, "renewed: {:?} → {:?}", initial.renew_time, later.renew_time);
    assert_eq!(later.acquire_time, initial.acquire_time, "a renewal keeps acquireTime");
    assert_eq!(later.lease_transitions, Some(0));

    let [a, b] = electors;
    a.release().await;
    b.release().await;
}

/// The leader crashes (its task is aborted, nothing is released): the follower waits out the
/// lease duration, then takes over and counts a transition.
async fn handover_on_crash(client: &Client, ns: &str) {
    let name = "crash";
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let alpha = leader(client, ns, name, "alpha").await;
    let beta = Elector::spawn(client.clone(), config(ns, name, "beta"));
    // Let beta observe alpha's renewals for a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!beta.is_leader());
    let before = spec(&api, name).await;
    assert_eq!(holder(&before), Some("alpha"));

    drop(alpha);
    let took = until_leader("beta takes over from the crashed alpha", Duration::from_secs(10), &beta).await;
    eprintln!("[leader] crash → takeover in {:.2} s (lease {LEASE:?}, retry {RETRY:?})", took.as_secs_f64());
    // Alpha renewed at most one retry period before the crash; beta counts from when it saw that.
    assert!(took >= LEASE - 2 * RETRY, "took over after {took:?}, before the lease expired");
    // At most one (jittered) retry to observe the last renewal and one to notice the expiry.
    assert!(took <= LEASE + 2 * JITTERED_RETRY + Duration::from_millis(500), "took over after {took:?}");
    let after = spec(&api, name).await;
    assert_eq!(holder(&after), Some("beta"));
    assert_eq!(after.lease_transitions, Some(before.lease_transitions.unwrap_or(0) + 1));
    assert!(after.acquire_time > before.acquire_time);
    beta.release().await;
}

/// The leader releases: the follower takes over within a retry period, not a lease duration;
/// released with no candidate left, the Lease names nobody.
async fn graceful_release(client: &Client, ns: &str) {
    let name = "release";
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let alpha = leader(client, ns, name, "alpha").await;
    let beta = Elector::spawn(client.clone(), config(ns, name, "beta"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!beta.is_leader());

    let start = Instant::now();
    alpha.release().await;
    let released = start.elapsed();
    let took = until_leader("beta takes over the released lease", LEASE, &beta).await + released;
    eprintln!("[leader] release → takeover in {:.2} s (lease {LEASE:?})", took.as_secs_f64());
    assert!(took < JITTERED_RETRY + Duration::from_millis(500), "took over after {took:?}");
    let after = spec(&api, name).await;
    assert_eq!(holder(&after), Some("beta"));
    assert_eq!(after.lease_transitions, Some(1));
    assert_eq!(after.lease_duration_seconds, Some(3));

    beta.release().await;
    let released = spec(&api, name).await;
    assert_eq!(holder(&released), None, "{released:?}");
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, Some(1));
}

/// Someone else writes the Lease while alpha leads: alpha's next renewal reads it, `lost()`
/// resolves, and alpha neither overwrites nor (on release) clears the new holder's lease.
async fn lost_to_another_holder(client: &Client, ns: &str) {
    let name = "taken";
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut alpha = leader(client, ns, name, "alpha").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Alpha renews concurrently: retry on conflicts.
    let taken = loop {
        let mut lease = api.get(name).await.expect("read the lease");
        let now = Some(MicroTime(Timestamp::now()));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = now.clone();
        spec.acquire_time = now;
        spec.lease_duration_seconds = Some(60);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => break Instant::now(),
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            Err(e) => panic!("overwriting the lease: {e}"),
        }
    };
    within("alpha notices it lost the lease", RENEW, alpha.lost()).await;
    let took = taken.elapsed();
    eprintln!("[leader] overwritten → lost() in {:.2} s", took.as_secs_f64());
    assert!(!alpha.is_leader());

    tokio::time::sleep(2 * RETRY).await;
    assert_eq!(holder(&spec(&api, name).await), Some("intruder"), "alpha wrote the lease after losing it");
    alpha.release().await;
    let after = spec(&api, name).await;
    assert_eq!(holder(&after), Some("intruder"), "alpha released a lease it no longer held");
    assert_eq!(after.lease_duration_seconds, Some(60));
}

/// Alpha loses its connection to the API server (requests hang): it stops leading at its renew
/// deadline, before beta (still connected) can take over at the lease's expiry: never two leaders.
async fn lost_when_unreachable(cluster: &LocalCluster, client: &Client, ns: &str) {
    let name = "unreachable";
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let proxy = Proxy::start(cluster.server()).await;
    let mut alpha = leader(&proxy.client(cluster).await, ns, name, "alpha").await;
    let beta = Elector::spawn(client.clone(), config(ns, name, "beta"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!beta.is_leader());

    let cut = Instant::now();
    proxy.cut();
    within("alpha gives up leading", RENEW + RETRY, alpha.lost()).await;
    let alpha_lost = cut.elapsed();
    assert!(!alpha.is_leader());
    assert!(!beta.is_leader(), "beta leads before alpha stopped");
    let beta_leads = until_leader("beta takes over", LEASE + Duration::from_secs(3), &beta).await + alpha_lost;
    eprintln!(
        "[leader] connection cut → alpha stops leading in {:.2} s, beta leads in {:.2} s",
        alpha_lost.as_secs_f64(),
        beta_leads.as_secs_f64()
    );
    assert!(alpha_lost <= RENEW + Duration::from_millis(100), "alpha led {alpha_lost:?} without renewing");
    assert_eq!(holder(&spec(&api, name).await), Some("beta"));

    // Releasing cannot reach the API server: it gives up after the renew deadline.
    let start = Instant::now();
    alpha.release().await;
    assert!(start.elapsed() < RENEW + Duration::from_millis(500), "release hung for {:?}", start.elapsed());
    beta.release().await;
}

/// A TCP proxy to the API server that can be cut: open connections are dropped and new ones are
/// accepted but never answered, as when the network to the API server fails.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(server: &str) -> Proxy {
        let target: SocketAddr = server.trim_start_matches("https://").parse().expect("API server address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (is_cut, conns) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    held.push(inbound);
                    continue;
                }
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().expect("connections").push(forward);
            }
        });
        Proxy { port, cut, connections, accept }
    }

    /// An admin client that talks through the proxy (the serving certificate covers 127.0.0.1).
    async fn client(&self, cluster: &LocalCluster) -> Client {
        let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig");
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("client config");
        config.cluster_url = format!("https://127.0.0.1:{}", self.port).parse().expect("proxy URL");
        Client::try_from(config).expect("client")
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.connections.lock().expect("connections").drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
