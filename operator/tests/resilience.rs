//! The operator under failure, on the local cluster with the real operator binary, the real
//! trainer binary (libtorch build) run as pods by the local node, and a real S3 server:
//!
//! - two replicas: only the one holding the Lease reconciles; killing it with SIGKILL hands the
//!   work over once the Lease expires (the lease and up to two of the follower's retry periods);
//! - trainers that cannot or do not finish: a Dataset that does not exist (waits, never runs,
//!   runs once the reference is fixed), a manifest gone from S3 (a permanent failure, never
//!   retried), a trainer killed with SIGKILL (counted, retried with back-off, resumed from
//!   `last`), the same with `backoffLimit: 0` (failed, not retried);
//! - the kill loop: the operator killed with SIGKILL 20 times at random points while 10
//!   TrainingJobs train (two of their trainers killed too): exactly one Job per attempt, no
//!   status ever goes back, and all of them finish with their whole history in status.
//!
//! Needs the libtorch trainer in `target/debug` (hack/test.sh builds it first).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use ocellus_crds::{Dataset, DatasetPhase, TrainingJob, TrainingJobStatus, TrainingPhase};
use ocellus_operator::controller::training_job::attempt_of;
use ocellus_storage::s3::Store;
use ocellus_tests::cluster::LocalCluster;
use ocellus_tests::s3::S3Server;
use ocellus_tests::{eventually, fixtures, proc};
use serde_json::json;

mod common;
use common::{BUCKET, Process, s3_secret, start_operator, start_operator_with_lease};

/// The operator's Lease (its default name) in its namespace.
const LEASE_NAMESPACE: &str = "default";
const LEASE_NAME: &str = "ocellus-operator";
/// The Lease of the two-replica scenario (`start_operator`'s).
const LEASE: Duration = Duration::from_secs(4);
/// The follower's retry period for that lease (lease/7, jittered by up to a fifth): it may see
/// the last renewal up to one period late, and the expiry up to one period late.
const RETRY: Duration = Duration::from_millis(4000 / 7 * 6 / 5);

#[test]
fn the_operator_under_failure_on_the_local_cluster() {
    ocellus_common::init_tracing(&ocellus_common::LogArgs {
        level: "warn".into(),
        format: ocellus_common::LogFormat::Text,
    });
    let s3 = S3Server::start().expect("S3 server");
    let c = common::cluster_with_crds();
    c.block_on(async {
        let src = common::buckets(&s3).await;
        let dir = std::env::temp_dir().join(format!("ocellus-resilience-{}", std::process::id()));
        fixtures::write_yolo(&dir.join("tiny"), &fixtures::samples(11, 12, 64), 64);
        src.put("tiny.zip", fixtures::zip_dir(&dir.join("tiny")).into(), "application/zip").await.expect("upload");
        let _ = std::fs::remove_dir_all(&dir);

        let client = c.client().await.expect("client");
        let ns = c.namespace(&client, "resilience").await.expect("namespace");
        s3_secret(&client, &ns).await;

        let started = Instant::now();
        let (leader, standby) = two_replicas(&c, &s3, &client, &ns).await;
        eprintln!("[resilience] two replicas: {:.0} s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        failing_trainers(&s3, &client, &ns).await;
        eprintln!("[resilience] failing trainers: {:.0} s", started.elapsed().as_secs_f64());
        leader.kill();
        standby.kill();
        let started = Instant::now();
        kill_loop(&c, &s3, &client, &ns).await;
        eprintln!("[resilience] kill loop: {:.0} s", started.elapsed().as_secs_f64());
    });
}

fn dataset() -> Dataset {
    serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": "tiny"},
        "spec": {
            "task": "detect",
            "classNames": fixtures::SHAPES,
            "source": {"s3": {"uri": "s3://ocellus-demo/tiny.zip"}},
            "split": {"train": 0.75, "val": 0.25, "test": 0.0},
            "versions": [{"name": "v1"}],
        },
    }))
    .expect("dataset")
}

/// A small CPU training run on `tiny` (or `dataset`/`version`): half a core, 64-pixel images.
fn training_job(name: &str, dataset: &str, version: Option<&str>, epochs: i32, backoff_limit: i32) -> TrainingJob {
    serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "datasetRef": {"name": dataset, "version": version},
            "model": {"architecture": "yolov8n"},
            "hyperparameters": {"epochs": epochs, "imgsz": 64, "batch": 8, "optimizer": "AdamW", "lr0": 0.002, "seed": 0},
            "resources": {"gpu": {"count": 0}, "cpu": "500m", "memory": "2Gi"},
            "checkpoint": {"intervalEpochs": 1},
            "backoffLimit": backoff_limit,
        },
    }))
    .expect("training job")
}

async fn holder(client: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE).get_opt(LEASE_NAME).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The names of the Jobs of TrainingJob `tj` (its attempts), sorted by attempt.
async fn attempts(client: &Client, ns: &str, tj: &str) -> Vec<String> {
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("ocellus.dev/name={tj}")))
        .await
        .expect("jobs");
    let mut names: Vec<String> = jobs.items.iter().map(|j| j.name_any()).collect();
    names.sort_by_key(|n| attempt_of(tj, Some(n)));
    names
}

/// The trainer processes the local node runs for TrainingJob `tj`.
fn trainer_pids(ns: &str, tj: &str) -> Vec<u32> {
    proc::processes_with_arg(&format!("--output-prefix={ns}/trainingjobs/{tj}"))
}

/// Two operator replicas: only the Lease holder reconciles (the other's reconcile counters stay
/// empty while the Dataset ingests); SIGKILL to the leader hands over once its Lease expires,
/// and the new leader picks the work up. Returns the new leader and a fresh standby, so that
/// the next scenario does not depend on one process keeping its Lease on a loaded machine.
async fn two_replicas(c: &LocalCluster, s3: &S3Server, client: &Client, ns: &str) -> (Process, Process) {
    let a = start_operator(c, s3, "replica-a");
    let b = start_operator(c, s3, "replica-b");
    Api::<Dataset>::namespaced(client.clone(), ns).create(&PostParams::default(), &dataset()).await.expect("dataset");
    eventually("Dataset tiny Ready", Duration::from_secs(120), || async {
        let st = Api::<Dataset>::namespaced(client.clone(), ns).get("tiny").await.ok()?.status?;
        assert_ne!(st.phase, DatasetPhase::Failed, "{st:?}");
        (st.phase == DatasetPhase::Ready && !st.versions.is_empty()).then_some(())
    })
    .await;
    let first = holder(client).await.expect("a holder");
    let (leader, follower, next) =
        if first.starts_with("replica-a-") { (a, b, "replica-b-") } else { (b, a, "replica-a-") };
    let led = leader.reconciles().await;
    assert!(led.get("dataset").is_some_and(|n| *n >= 1.0), "the leader did not reconcile the Dataset: {led:?}");
    assert_eq!(follower.reconciles().await, BTreeMap::new(), "the follower reconciled while {first} led");

    let killed = Instant::now();
    leader.kill();
    let new = eventually("the follower takes the Lease", Duration::from_secs(30), || async {
        holder(client).await.filter(|h| h.starts_with(next))
    })
    .await;
    let handover = killed.elapsed();
    eprintln!("[resilience] {first} killed; {new} leads after {:.1} s", handover.as_secs_f64());
    // The Lease was last renewed before the kill; the follower counts the lease from when it saw
    // that renewal and checks every retry period; a second for the API calls and this poll.
    let bound = LEASE + RETRY * 2 + Duration::from_secs(1);
    assert!(handover < bound, "handover took {handover:?} with a {LEASE:?} lease (bound {bound:?})");
    eventually("the new leader reconciles", Duration::from_secs(30), || async {
        follower.reconciles().await.get("dataset").copied().filter(|n| *n >= 1.0)
    })
    .await;
    (follower, start_operator(c, s3, "replica-c"))
}

/// Waits until TrainingJob `name` is Failed and checks its failure: `(reason, exit code,
/// restarts)` and a message that `says` something.
async fn failed(
    tjs: &Api<TrainingJob>,
    name: &str,
    limit: Duration,
    (reason, exit_code, restarts): (&str, i32, i32),
    says: &str,
) -> TrainingJobStatus {
    let st = eventually(&format!("{name} Failed"), limit, || async {
        tjs.get(name).await.ok()?.status.filter(|s| s.phase == TrainingPhase::Failed)
    })
    .await;
    let failure = st.job.failure.clone().expect("failure");
    assert_eq!(
        (failure.reason.as_deref(), failure.exit_code, st.restarts),
        (Some(reason), Some(exit_code), restarts),
        "{st:?}"
    );
    assert!(failure.message.as_deref().is_some_and(|m| m.contains(says)), "{failure:?}");
    st
}

/// Trainers that cannot start or do not finish, all applied at once.
async fn failing_trainers(s3: &S3Server, client: &Client, ns: &str) {
    let tjs: Api<TrainingJob> = Api::namespaced(client.clone(), ns);
    // The frozen v1's manifest is lost from the bucket.
    let ds = Api::<Dataset>::namespaced(client.clone(), ns).get("tiny").await.expect("dataset");
    let v1 = ds.status.as_ref().map(|s| s.versions[0].manifest_uri.clone()).expect("v1");
    let key = v1.strip_prefix(&format!("s3://{BUCKET}/")).expect("platform bucket");
    assert_eq!(Store::new(&s3.config(), BUCKET).delete_prefix(key).await.expect("delete"), 1);
    for tj in [
        training_job("no-dataset", "no-such-dataset", None, 1, 2),
        training_job("lost-manifest", "tiny", Some("v1"), 1, 2),
        training_job("killed", "tiny", None, 8, 2),
        // Killed as soon as it runs: enough epochs that it cannot finish before it is looked for.
        training_job("killed-once", "tiny", None, 100, 0),
    ] {
        tjs.create(&PostParams::default(), &tj).await.expect("create");
    }
    let status = |name: &'static str| {
        let tjs = tjs.clone();
        async move { tjs.get(name).await.ok()?.status }
    };

    // A manifest gone from S3: the trainer says so (exit 2) and nothing retries it.
    let st = failed(&tjs, "lost-manifest", Duration::from_secs(120), ("ManifestNotFound", 2, 0), "manifest").await;
    assert!(st.common.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true()), "{:?}", st.common.conditions);

    // Killed with SIGKILL while training, with no retries allowed: failed, not retried.
    let pid = eventually("killed-once's trainer running", Duration::from_secs(120), || async {
        trainer_pids(ns, "killed-once").first().copied()
    })
    .await;
    proc::kill_process(pid);
    failed(&tjs, "killed-once", Duration::from_secs(60), ("BackoffLimitExceeded", 137, 1), "SIGKILL").await;

    // Killed with SIGKILL after its first checkpoint: counted, retried after the back-off,
    // resumed from `last`. (Killed before any checkpoint is complete, a retry starts over.)
    let at = eventually("killed after a checkpoint", Duration::from_secs(180), || async {
        let st = status("killed").await?;
        assert_ne!(st.phase, TrainingPhase::Failed, "{st:?}");
        let checkpointed = st.checkpoints.as_ref().is_some_and(|c| c.last.is_some());
        // Status follows the run every 5 s: leave a window of several epochs to see it in.
        let e = st.epoch.filter(|e| checkpointed && *e < 7 && st.phase == TrainingPhase::Running)?;
        let pids = trainer_pids(ns, "killed");
        assert_eq!(st.restarts, 0, "{st:?}");
        (pids.len() == 1).then(|| (e, pids[0]))
    })
    .await;
    proc::kill_process(at.1);
    let st = eventually("killed's failure counted", Duration::from_secs(30), || async {
        status("killed").await.filter(|s| s.restarts == 1)
    })
    .await;
    let failure = st.job.failure.clone().unwrap_or_else(|| panic!("no failure in {st:?}"));
    assert_eq!(failure.exit_code, Some(137), "{st:?}");
    assert!(failure.message.as_deref().is_some_and(|m| m.contains("SIGKILL")), "{failure:?}");
    let retry = st.common.conditions.iter().find(|c| c.type_ == "Progressing").expect("Progressing");
    assert_eq!(retry.reason.as_deref(), Some("BackoffRetry"), "{retry:?}");
    let lowest_after = Mutex::new(i32::MAX);
    let st = eventually("killed resumed and Succeeded", Duration::from_secs(300), || async {
        let st = status("killed").await?;
        assert_ne!(st.phase, TrainingPhase::Failed, "{st:?}");
        if st.job.job_name.as_deref() == Some("killed-2") && st.phase == TrainingPhase::Running {
            let mut low = lowest_after.lock().expect("lock");
            *low = (*low).min(st.epoch.unwrap_or(i32::MAX));
        }
        (st.phase == TrainingPhase::Succeeded).then_some(st)
    })
    .await;
    assert_eq!((st.job.job_name.as_deref(), st.restarts, st.epoch), (Some("killed-2"), 1, Some(8)), "{st:?}");
    let low = *lowest_after.lock().expect("lock");
    assert!(low == i32::MAX || low >= at.0, "the retry started over: epoch {low} after a kill at {}", at.0);
    let resumed = Api::<Job>::namespaced(client.clone(), ns).get("killed-2").await.expect("job");
    let args = resumed.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].args.clone().unwrap_or_default());
    assert!(
        args.as_ref().is_some_and(|a| a.iter().any(|x| x == "--resume")),
        "the retry did not resume: {args:?} {st:?}"
    );

    // The failures are Events too, as warnings.
    let events = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("events");
    for (name, reason) in [("lost-manifest", "ManifestNotFound"), ("killed-once", "BackoffLimitExceeded")] {
        assert!(
            events.items.iter().any(|e| e.involved_object.name.as_deref() == Some(name)
                && e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)),
            "no {reason} warning for {name}"
        );
    }
    // Permanent failures were never retried.
    assert_eq!(attempts(client, ns, "lost-manifest").await, ["lost-manifest-1"]);
    assert_eq!(attempts(client, ns, "killed-once").await, ["killed-once-1"]);
    assert_eq!(attempts(client, ns, "killed").await, ["killed-1", "killed-2"]);

    // A Dataset that does not exist: it waits (no Job, nothing counted) until the reference is
    // fixed, then it trains.
    let st = status("no-dataset").await.expect("status");
    assert_eq!((st.phase, st.restarts), (TrainingPhase::Pending, 0), "{st:?}");
    let progressing =
        st.common.conditions.iter().find(|c| c.type_ == "Progressing" && c.is_true()).expect("Progressing");
    assert_eq!(progressing.reason.as_deref(), Some("DatasetNotFound"), "{progressing:?}");
    assert!(attempts(client, ns, "no-dataset").await.is_empty());
    let fix = json!({"spec": {"datasetRef": {"name": "tiny"}}});
    tjs.patch("no-dataset", &PatchParams::default(), &Patch::Merge(&fix)).await.expect("patch");
    let st = eventually("no-dataset fixed and Succeeded", Duration::from_secs(180), || async {
        let st = status("no-dataset").await?;
        assert_ne!(st.phase, TrainingPhase::Failed, "{st:?}");
        (st.phase == TrainingPhase::Succeeded).then_some(st)
    })
    .await;
    assert_eq!((st.job.job_name.as_deref(), st.restarts), (Some("no-dataset-1"), 0), "{st:?}");
}

/// What the status of one TrainingJob showed, in the order the watch saw it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    phase: TrainingPhase,
    restarts: i32,
    attempt: i32,
    epoch: Option<i32>,
    observed_generation: Option<i64>,
}

/// Why `next` goes back from `prev`, if it does.
fn regression(prev: &Seen, next: &Seen) -> Option<String> {
    let final_phase = |p: TrainingPhase| matches!(p, TrainingPhase::Succeeded | TrainingPhase::Failed);
    if final_phase(prev.phase) && next != prev {
        return Some("a final status changed".into());
    }
    if next.restarts < prev.restarts {
        return Some("restarts went down".into());
    }
    if next.attempt < prev.attempt {
        return Some("the attempt went down".into());
    }
    if next.observed_generation < prev.observed_generation {
        return Some("observedGeneration went down".into());
    }
    if next.attempt == prev.attempt && next.epoch < prev.epoch {
        return Some("the epoch went down within an attempt".into());
    }
    None
}

/// A small reproducible random source (xorshift): the kill points.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The operator killed with SIGKILL 20 times at random points (after it takes the Lease) while
/// 10 TrainingJobs train; a final replica then runs to the end.
async fn kill_loop(c: &LocalCluster, s3: &S3Server, client: &Client, ns: &str) {
    const N: usize = 10;
    const KILLS: usize = 20;
    const EPOCHS: i32 = 2;
    // Odd: xorshift stays at zero from zero.
    let seed = std::env::var("OCELLUS_KILL_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    eprintln!("[resilience] kill loop seed {seed} (OCELLUS_KILL_SEED)");
    let mut random = Random(seed);
    let tjs: Api<TrainingJob> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..N).map(|i| format!("loop-{i}")).collect();

    // Every status the watch sees, checked against the one before.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let watch = {
        let (tjs, violations) = (tjs.clone(), violations.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<String, Seen> = BTreeMap::new();
            let mut stream = watcher(tjs, watcher::Config::default()).applied_objects().boxed();
            while let Some(ev) = stream.next().await {
                let Ok(tj) = ev else { continue };
                let name = tj.name_any();
                let Some(st) = tj.status.clone().filter(|_| name.starts_with("loop-")) else { continue };
                let seen = Seen {
                    phase: st.phase,
                    restarts: st.restarts,
                    attempt: attempt_of(&name, st.job.job_name.as_deref()),
                    epoch: st.epoch,
                    observed_generation: st.common.observed_generation,
                };
                if let Some(prev) = last.get(&name)
                    && let Some(why) = regression(prev, &seen)
                {
                    violations.lock().expect("lock").push(format!("{name}: {why}: {prev:?} → {seen:?}"));
                }
                last.insert(name, seen);
            }
        })
    };

    for name in &names {
        tjs.create(&PostParams::default(), &training_job(name, "tiny", None, EPOCHS, 3)).await.expect("create");
    }
    // Two of the trainers die too, so that some TrainingJobs have more than one attempt.
    let mut trainers_to_kill = vec!["loop-3".to_string(), "loop-7".to_string()];
    let mut trainers_killed = vec![];
    for i in 0..KILLS {
        let identity = format!("kill-{i}");
        let op = start_operator_with_lease(c, s3, &identity, 3);
        eventually(&format!("{identity} leads"), Duration::from_secs(60), || async {
            holder(client).await.filter(|h| h.starts_with(&format!("{identity}-")))
        })
        .await;
        // A random point of its work: starting the controllers, filling caches, reconciling.
        tokio::time::sleep(Duration::from_millis(random.below(2500))).await;
        // Whichever of them is training now (the scheduler decides when each runs).
        let running = trainers_to_kill.iter().enumerate().find_map(|(i, t)| match trainer_pids(ns, t)[..] {
            [pid] => Some((i, pid)),
            _ => None,
        });
        if let Some((i, pid)) = running {
            proc::kill_process(pid);
            trainers_killed.push(trainers_to_kill.remove(i));
        }
        op.kill();
    }
    eprintln!("[resilience] {KILLS} operator kills done; trainers killed: {trainers_killed:?}");
    assert!(!trainers_killed.is_empty(), "no trainer was running at any kill point: the retries went untested");

    // A long lease: the last replica alone must not lose it to a slow write on a loaded machine
    // (it still takes over as soon as kill-19's short one expires).
    let last = start_operator_with_lease(c, s3, "final", 15);
    let finals = eventually("every loop TrainingJob finished", Duration::from_secs(600), || async {
        let list = tjs.list(&ListParams::default()).await.ok()?;
        let loops: Vec<TrainingJob> = list.items.into_iter().filter(|t| t.name_any().starts_with("loop-")).collect();
        let done = loops.iter().all(|t| {
            t.status.as_ref().is_some_and(|s| matches!(s.phase, TrainingPhase::Succeeded | TrainingPhase::Failed))
        });
        (loops.len() == N && done).then_some(loops)
    })
    .await;
    // Let the watch see the last writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let violations = violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "status went back: {violations:#?}");
    for tj in &finals {
        let name = tj.name_any();
        let st = tj.status.clone().expect("status");
        assert_eq!(st.phase, TrainingPhase::Succeeded, "{name}: {st:?}");
        // Exactly one Job per attempt, and no attempt without its failure counted.
        let attempt = attempt_of(&name, st.job.job_name.as_deref());
        let expected: Vec<String> = (1..=attempt).map(|a| format!("{name}-{a}")).collect();
        assert_eq!(attempts(client, ns, &name).await, expected, "{name}: {st:?}");
        assert_eq!(st.restarts, attempt - 1, "{name}: {st:?}");
        let killed = trainers_killed.contains(&name);
        assert_eq!(st.restarts >= 1, killed, "{name}: restarts {} (trainer killed: {killed})", st.restarts);
        // Nothing lost: the whole run's results are in status.
        assert_eq!((st.epoch, st.epochs), (Some(EPOCHS), Some(EPOCHS)), "{name}");
        assert!(st.best_metrics.is_some() && st.latest_metrics.is_some(), "{name}: {st:?}");
        let cps = st.checkpoints.clone().unwrap_or_default();
        assert!(cps.last.is_some() && cps.best.is_some(), "{name}: {cps:?}");
        assert_eq!(st.common.observed_generation, tj.metadata.generation, "{name}");
    }
    drop(last);
}
