//! The Kubernetes source: kube-rs watchers over Service, EndpointSlice,
//! Pod, Namespace, Node and NetworkPolicy (k8s-openapi types), with
//! in-cluster config or kubeconfig through `kube::Config::infer`.
//!
//! Every (re)list is delivered as one `Change::Replace` of the whole kind,
//! so an object deleted while the watch was down is deleted here too: a
//! watch gap can never lose a deletion (the failure mode of
//! cilium/cilium#48050).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};
use weir_model::{validate::validate, Change, Kind, Object, Warning};

use super::{SourceEvent, Sender};

/// Sends `Synced` once every kind has completed its first list.
struct SyncTracker {
    remaining: AtomicUsize,
    sent: AtomicBool,
}

impl SyncTracker {
    async fn listed(&self, tx: &Sender) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 && !self.sent.swap(true, Ordering::AcqRel) {
            let _ = tx.send(SourceEvent::Synced).await;
        }
    }
}

/// Connects with `kube::Config::infer` and starts the watchers.
pub fn spawn(tx: Sender) -> anyhow::Result<()> {
    tokio::spawn(async move {
        match Client::try_default().await {
            Ok(client) => run(client, tx),
            Err(error) => tracing::error!(%error, "cannot reach the Kubernetes API (kube::Config::infer)"),
        }
    });
    Ok(())
}

/// Starts one watcher per kind on `client`.
pub fn run(client: Client, tx: Sender) {
    let tracker = Arc::new(SyncTracker { remaining: AtomicUsize::new(Kind::ALL.len()), sent: AtomicBool::new(false) });
    tokio::spawn(watch(Api::<Service>::all(client.clone()), Kind::Service, Object::Service, tx.clone(), tracker.clone()));
    tokio::spawn(watch(Api::<EndpointSlice>::all(client.clone()), Kind::EndpointSlice, Object::EndpointSlice, tx.clone(), tracker.clone()));
    tokio::spawn(watch(Api::<Pod>::all(client.clone()), Kind::Pod, Object::Pod, tx.clone(), tracker.clone()));
    tokio::spawn(watch(Api::<Namespace>::all(client.clone()), Kind::Namespace, Object::Namespace, tx.clone(), tracker.clone()));
    tokio::spawn(watch(Api::<Node>::all(client.clone()), Kind::Node, Object::Node, tx.clone(), tracker.clone()));
    tokio::spawn(watch(Api::<NetworkPolicy>::all(client), Kind::NetworkPolicy, Object::NetworkPolicy, tx, tracker));
}

/// Validates an object from the API; invalid ones become a warning.
fn checked(o: Object) -> Result<Object, Warning> {
    match validate(&o) {
        Ok(()) => Ok(o),
        Err(e) => Err(Warning { file: None, object: Some(o.key().to_string()), field: Some(e.field), message: e.message }),
    }
}

async fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, tx: Sender, tracker: Arc<SyncTracker>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut buffer: Option<Vec<Object>> = None;
    let mut warnings = Vec::new();
    let mut first_list = true;
    while let Some(ev) = stream.next().await {
        let at = Instant::now();
        let (changes, listed) = match ev {
            Ok(watcher::Event::Apply(o)) => match checked(wrap(o)) {
                Ok(o) => (vec![Change::Upsert(o)], false),
                Err(w) => {
                    warnings.push(w);
                    (Vec::new(), false)
                }
            },
            Ok(watcher::Event::Delete(o)) => (vec![Change::Delete(wrap(o).key())], false),
            Ok(watcher::Event::Init) => {
                buffer = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                match checked(wrap(o)) {
                    Ok(o) => buffer.get_or_insert_with(Vec::new).push(o),
                    Err(w) => warnings.push(w),
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                (vec![Change::Replace { kind, objects: buffer.take().unwrap_or_default() }], true)
            }
            Err(error) => {
                tracing::warn!(kind = kind.as_str(), %error, "watch error; retrying with backoff");
                continue;
            }
        };
        let warnings = std::mem::take(&mut warnings);
        if tx.send(SourceEvent::Changes { changes, warnings, at }).await.is_err() {
            return;
        }
        if listed && first_list {
            first_list = false;
            tracker.listed(&tx).await;
        }
    }
}
