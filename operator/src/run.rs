//! Wires the controllers: their watches (the kind itself, the Jobs it owns, those Jobs' pods,
//! and what it references), graceful shutdown, and the reflector caches they read.

use std::sync::Arc;

use futures::{Future, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use ocellus_crds::{Dataset, Export, ModelDeployment, TrainingJob};

use crate::controller::{
    Context, dataset, error_policy_for, export, finish, key_of, managed, model_deployment, scoped, training_job,
};
use crate::workload::{KIND_LABEL, NAME_LABEL};

/// Maps a pod of one of our Jobs to the Ocellus object of `kind` that owns the Job.
fn pod_owner<K: kube::Resource<DynamicType = ()>>(kind: &'static str) -> impl Fn(Pod) -> Option<ObjectRef<K>> {
    move |pod: Pod| {
        let labels = pod.labels();
        if labels.get(KIND_LABEL)? != kind {
            return None;
        }
        Some(ObjectRef::new(labels.get(NAME_LABEL)?).within(&pod.namespace()?))
    }
}

/// Runs the four controllers until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let cfg = watcher::Config::default();
    let jobs = || scoped::<Job>(&client, namespace);
    let pods = || scoped::<Pod>(&client, namespace);

    let ds_ctl = Controller::new(scoped::<Dataset>(&client, namespace), cfg.clone())
        .owns(jobs(), managed())
        .watches(pods(), managed(), pod_owner::<Dataset>("Dataset"))
        .graceful_shutdown_on(shutdown.clone());
    let datasets: Store<Dataset> = ds_ctl.store();

    let tj_ctl = Controller::new(scoped::<TrainingJob>(&client, namespace), cfg.clone());
    let trainingjobs: Store<TrainingJob> = tj_ctl.store();
    let tj_index = trainingjobs.clone();
    let tj_ctl = tj_ctl
        .owns(jobs(), managed())
        .watches(pods(), managed(), pod_owner::<TrainingJob>("TrainingJob"))
        // A Dataset becoming Ready (or gaining a version) wakes the TrainingJobs waiting for it.
        .watches(scoped::<Dataset>(&client, namespace), cfg.clone(), move |ds: Dataset| {
            let ns = ds.namespace();
            tj_index
                .state()
                .into_iter()
                .filter(|tj| tj.namespace() == ns && tj.spec.dataset_ref.name == ds.name_any())
                .map(|tj| ObjectRef::from(tj.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone());

    let ex_ctl = Controller::new(scoped::<Export>(&client, namespace), cfg.clone());
    let ex_index = ex_ctl.store();
    let export_store: Store<Export> = ex_index.clone();
    let ex_ctl = ex_ctl
        .owns(jobs(), managed())
        .watches(pods(), managed(), pod_owner::<Export>("Export"))
        // A TrainingJob's progress (new weights) wakes the Exports of it.
        .watches(scoped::<TrainingJob>(&client, namespace), cfg.clone(), move |tj: TrainingJob| {
            let ns = tj.namespace();
            ex_index
                .state()
                .into_iter()
                .filter(|ex| {
                    ex.namespace() == ns
                        && ex.spec.source.training_job.as_ref().is_some_and(|r| r.name == tj.name_any())
                })
                .map(|ex| ObjectRef::from(ex.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone());

    let md_ctl = Controller::new(scoped::<ModelDeployment>(&client, namespace), cfg.clone());
    let md_index: Store<ModelDeployment> = md_ctl.store();
    let serving = Arc::new(model_deployment::Stores { exports: export_store.clone(), deployments: md_index.clone() });
    let md_ctl = md_ctl
        .owns(scoped::<Deployment>(&client, namespace), managed())
        .watches(pods(), managed(), pod_owner::<ModelDeployment>(model_deployment::KIND))
        // An Export finishing (or failing) moves the deployments that serve it.
        .watches(scoped::<Export>(&client, namespace), cfg.clone(), move |ex: Export| {
            let ns = ex.namespace();
            md_index
                .state()
                .into_iter()
                .filter(|md| {
                    md.namespace() == ns && model_deployment::export_name(md).as_deref() == Some(&ex.name_any())
                })
                .map(|md| ObjectRef::from(md.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone());

    // A census of the caches every 10 s: ocellus_resources{kind, phase}.
    let census = {
        let (ctx, ds, tj, ex, md) =
            (ctx.clone(), datasets.clone(), trainingjobs.clone(), export_store.clone(), serving.deployments.clone());
        async move {
            let count = async {
                loop {
                    let m = &ctx.metrics;
                    let phase = |p: Option<String>| p.unwrap_or_else(|| "None".into());
                    m.census(
                        "Dataset",
                        ds.state().iter().map(|o| phase(o.status.as_ref().map(|s| format!("{:?}", s.phase)))),
                    );
                    m.census(
                        "TrainingJob",
                        tj.state().iter().map(|o| phase(o.status.as_ref().map(|s| format!("{:?}", s.phase)))),
                    );
                    m.census(
                        "Export",
                        ex.state().iter().map(|o| phase(o.status.as_ref().map(|s| format!("{:?}", s.phase)))),
                    );
                    m.census(
                        "ModelDeployment",
                        md.state().iter().map(|o| phase(o.status.as_ref().map(|s| format!("{:?}", s.phase)))),
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                }
            };
            tokio::select! {
                _ = count => {}
                _ = shutdown => {}
            }
        }
    };

    let tj_for_exports = trainingjobs.clone();
    let stores = Arc::new(training_job::Stores { datasets: datasets.clone(), trainingjobs });
    let ds_run = ds_ctl
        .run(
            |obj, ctx: Arc<Context>| async move {
                let key = key_of(obj.as_ref());
                let r = dataset::reconcile(obj, ctx.clone()).await;
                finish(&ctx, dataset::CONTROLLER, &key, r)
            },
            |obj, err, ctx| error_policy_for(&ctx, &key_of(obj.as_ref()), err),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let tj_run = tj_ctl
        .run(
            move |obj, ctx: Arc<Context>| {
                let stores = stores.clone();
                async move {
                    let key = key_of(obj.as_ref());
                    let r = training_job::reconcile(obj, ctx.clone(), &stores).await;
                    finish(&ctx, training_job::CONTROLLER, &key, r)
                }
            },
            |obj, err, ctx| error_policy_for(&ctx, &key_of(obj.as_ref()), err),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let ex_run = ex_ctl
        .run(
            move |obj, ctx: Arc<Context>| {
                let (datasets, trainingjobs) = (datasets.clone(), tj_for_exports.clone());
                async move {
                    let key = key_of(obj.as_ref());
                    let r = export::reconcile(obj, ctx.clone(), &datasets, &trainingjobs).await;
                    finish(&ctx, export::CONTROLLER, &key, r)
                }
            },
            |obj, err, ctx| error_policy_for(&ctx, &key_of(obj.as_ref()), err),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let md_run = md_ctl
        .run(
            move |obj, ctx: Arc<Context>| {
                let stores = serving.clone();
                async move {
                    let key = key_of(obj.as_ref());
                    let r = model_deployment::reconcile(obj, ctx.clone(), &stores).await;
                    finish(&ctx, model_deployment::CONTROLLER, &key, r)
                }
            },
            |obj, err, ctx| error_policy_for(&ctx, &key_of(obj.as_ref()), err),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    tokio::join!(ds_run, tj_run, ex_run, md_run, census);
}
