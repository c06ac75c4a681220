//! One Pod read straight from the source, for a pod the watch has not
//! delivered yet: weir-cni registers a pod with the agent moments after
//! the kubelet started it, often before the Pod's watch event arrives.
//! With the Kubernetes source this is one GET; the directory source has
//! nothing to ask (its watcher delivers every file).

use std::sync::{Arc, OnceLock};

use kube::{Api, Client};
use weir_model::{validate::validate, Object, PodObject};

/// Why a lookup failed (the caller retries until its deadline).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("not connected to the Kubernetes API yet")]
    NotConnected,
    #[error("reading Pod {namespace}/{name}: {source}")]
    Api { namespace: String, name: String, #[source] source: kube::Error },
    #[error("Pod {object}: {field}: {message}")]
    Invalid { object: String, field: String, message: String },
}

/// Reads single Pods from the source.
#[derive(Clone, Default)]
pub struct PodLookup {
    client: Option<Arc<OnceLock<Client>>>,
}

impl PodLookup {
    /// The directory source: nothing to ask.
    pub fn none() -> Self {
        Self::default()
    }

    /// The Kubernetes source; the client is set once connected.
    pub(crate) fn kube(cell: Arc<OnceLock<Client>>) -> Self {
        Self { client: Some(cell) }
    }

    /// Whether [`PodLookup::get`] can ask anything.
    pub fn can_ask(&self) -> bool {
        self.client.is_some()
    }

    /// The Pod, `None` when it does not exist (or the source cannot ask).
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Object>, LookupError> {
        let Some(cell) = &self.client else { return Ok(None) };
        let client = cell.get().ok_or(LookupError::NotConnected)?.clone();
        let pod = Api::<PodObject>::namespaced(client, namespace)
            .get_opt(name)
            .await
            .map_err(|source| LookupError::Api { namespace: namespace.into(), name: name.into(), source })?;
        let Some(pod) = pod else { return Ok(None) };
        let o = Object::Pod(Box::new(pod));
        validate(&o).map_err(|e| LookupError::Invalid { object: o.key().to_string(), field: e.field, message: e.message })?;
        Ok(Some(o))
    }
}
