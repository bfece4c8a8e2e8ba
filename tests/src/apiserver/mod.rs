//! A Kubernetes API server for tests, in process, on 127.0.0.1 over plain HTTP, reached by the
//! real binaries through a kubeconfig like any cluster.
//!
//! No maintained crate serves a kube-runtime Controller (STACK.md), so this is ours. It behaves
//! like kube-apiserver where our code depends on it: a global resourceVersion; optimistic
//! concurrency (409 Conflict on a stale resourceVersion); 404/409 Status bodies; list then
//! watch from a resourceVersion, with selector transitions sent as ADDED/DELETED and a 410
//! Expired ERROR event when the version has been compacted away; namespaces must exist; the
//! status subresource ignores spec and the main resource ignores status; generation bumps on
//! spec changes; ownerReference garbage collection on delete; mutating admission webhooks
//! registered by the test (`admission.rs`); pod scheduling gates (only removal on update, no
//! binding while gated). It is not a conformance target: no schema validation, no RBAC. Tests
//! may inject faults (error answers with the real server's Status bodies: 404 as for a CRD not
//! installed, 403 as RBAC denies), take the server down (connections refused) and bring it
//! back, and count requests.

mod admission;
mod error;
mod fields;
mod handlers;
mod resources;
mod selector;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use admission::{MatchCondition, MutatingWebhook};
pub use resources::{RESOURCES, ResourceType};
pub use selector::{FieldSelector, LabelSelector};
pub use store::{Fault, RequestKey};

use store::Shared;

/// A running test API server. Dropping it stops the server.
pub struct TestApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// The listener's task and its own stop token (see [`Self::go_down`]).
    listening: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
}

fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: &CancellationToken,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let app = handlers::router(shared, stop.clone());
    let token = stop.child_token();
    let done = token.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(done.cancelled_owned())
            .await;
    });
    (token, task)
}

impl TestApiServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_history(store::DEFAULT_HISTORY).await
    }

    /// `history` bounds the watch event log; a watch from an older resourceVersion gets 410.
    pub async fn start_with_history(history: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(history));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            shared.seed(
                "",
                "v1",
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?;
        }
        let stop = CancellationToken::new();
        let listening = Mutex::new(Some(serve(listener, shared.clone(), &stop)));
        Ok(Self {
            addr,
            shared,
            stop,
            listening,
        })
    }

    /// An outage, as a stopped kube-apiserver: closes the listener (new connections are
    /// refused) and every open connection, watches included. The store is kept.
    pub async fn go_down(&self) {
        let listening = self
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((token, mut task)) = listening {
            token.cancel();
            // Graceful: requests in flight finish and idle connections close. Watches are
            // ended again and again until every connection has closed: a client that reissued
            // its watch on a kept-alive connection before that connection saw the shutdown
            // would otherwise be served by it for as long as the outage lasts.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                self.shared.drop_watches();
                match tokio::time::timeout(std::time::Duration::from_millis(100), &mut task).await {
                    Ok(_) => break,
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        eprintln!("test API server: connections still open 5 s into an outage");
                        task.abort();
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Ends an outage: listens again on the same address.
    pub async fn come_back(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        let serving = serve(listener, self.shared.clone(), &self.stop);
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = Some(serving);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (JSON is YAML) pointing at this server.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for("test")
    }

    /// A kubeconfig whose requests are counted under `token` (RequestKey::client), so a
    /// test can tell one binary's calls from everyone else's.
    pub fn kubeconfig_for(&self, token: &str) -> String {
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url()}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}]
        })
        .to_string()
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Requests served so far, by verb and resource.
    pub fn request_counts(&self) -> BTreeMap<RequestKey, u64> {
        self.shared.request_counts()
    }

    pub fn reset_request_counts(&self) {
        self.shared.reset_request_counts();
    }

    /// Answers the next `count` requests matching `fault` with its status instead of serving.
    pub fn inject(&self, fault: Fault, count: u32) {
        self.shared.inject(fault, count);
    }

    /// Removes every injected fault (a persistent one is injected with `u32::MAX`).
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Registers a mutating admission webhook: from now on, matching requests go through it
    /// before they are stored (see `admission.rs`).
    pub fn register_mutating_webhook(&self, hook: MutatingWebhook) {
        let mut hooks = self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::make_mut(&mut hooks).push(hook);
    }

    /// Unregisters every mutating admission webhook (requests are admitted as without any).
    pub fn clear_mutating_webhooks(&self) {
        *self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner()) = Arc::default();
    }

    /// Deletes an object in process, as setup that is not part of what is measured (no request
    /// is counted; dependents are collected as on any delete).
    pub fn delete_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let rt = resources::lookup(group, version, plural)
            .ok_or_else(|| anyhow::anyhow!("unknown resource {plural}"))?;
        self.shared
            .delete(rt, namespace, name, &Value::Null)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{}", e.body))
    }

    pub fn handle(&self) -> ApiHandle {
        ApiHandle(self.shared.clone())
    }

    /// Binds a pod to a node as the scheduler does through `pods/binding`: fails for a bound
    /// or a gated pod, as the real one does.
    pub fn bind(&self, namespace: &str, name: &str, node: &str) -> anyhow::Result<Value> {
        self.shared
            .bind(namespace, name, node)
            .map_err(|e| anyhow::anyhow!("{}", e.body))
    }

    /// Ends every open watch (clients must re-watch), as an API server restart would.
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Forgets watch history, so that re-watching from an old resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        self.shared.compact();
    }

    /// Creates an object in process, as setup that is not part of what is measured (no
    /// request is counted).
    pub fn create_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        object: Value,
    ) -> anyhow::Result<Value> {
        self.shared.create_direct(group, version, plural, object)
    }

    /// Merges `status` into an object's status in process (a kubelet's write), uncounted.
    pub fn merge_status_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        status: &Value,
    ) -> anyhow::Result<Value> {
        self.shared
            .merge_status_direct(group, version, plural, namespace, name, status)
    }

    /// Current objects of a type, for assertions that must not go through a client.
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.shared.objects(group, plural)
    }

    /// Current objects of a type for which `wanted` holds (only those are copied).
    pub fn objects_where(
        &self,
        group: &str,
        plural: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.shared.objects_where(group, plural, wanted)
    }

    pub fn object_count(&self) -> usize {
        self.shared.object_count()
    }

    /// An object's managedFields, in kube-apiserver's shape (kept beside the object, not in
    /// it: see `fields.rs`).
    pub fn managed_fields(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Value {
        match resources::lookup(group, version, plural) {
            Some(rt) => self.shared.managed_fields(rt, namespace, name),
            None => Value::Null,
        }
    }
}

/// A handle on a running test API server's store for in-process players (scheduler, kubelet)
/// that outlive a borrow of the server; it does not keep the server running.
#[derive(Clone)]
pub struct ApiHandle(Arc<Shared>);

impl ApiHandle {
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.0.objects(group, plural)
    }

    pub fn objects_where(
        &self,
        group: &str,
        plural: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.0.objects_where(group, plural, wanted)
    }

    pub fn merge_status_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        status: &Value,
    ) -> anyhow::Result<Value> {
        self.0
            .merge_status_direct(group, version, plural, namespace, name, status)
    }

    /// See [`TestApiServer::bind`].
    pub fn bind(&self, namespace: &str, name: &str, node: &str) -> anyhow::Result<Value> {
        self.0
            .bind(namespace, name, node)
            .map_err(|e| anyhow::anyhow!("{}", e.body))
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Shared by the store and handlers: the API server's error body.
pub(crate) fn status(code: u16, reason: &str, message: impl Into<String>) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message.into(), "reason": reason, "code": code})
}

pub(crate) type SharedState = Arc<Shared>;
pub(crate) type Lock<T> = Mutex<T>;
