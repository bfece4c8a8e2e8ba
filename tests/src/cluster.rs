//! Where an end-to-end test runs: the in-process test API server, or the real cluster named
//! by `PREFETCH_E2E_KUBECONFIG`. Tests talk to either through a kube Client and a kubeconfig
//! file, so the same test exercises both.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::apiserver::TestApiServer;
use crate::fixtures::TempDir;

pub const REAL_CLUSTER_ENV: &str = "PREFETCH_E2E_KUBECONFIG";

pub struct TestCluster {
    /// The in-process API server; `None` against a real cluster.
    pub api: Option<TestApiServer>,
    pub kubeconfig: PathBuf,
    pub client: Client,
    /// A namespace of this test's own, deleted at the end against a real cluster.
    pub namespace: String,
    pub dir: TempDir,
}

/// A kube Client for the cluster a kubeconfig file names.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("reading {}", kubeconfig.display()))?;
    Ok(Client::try_from(config)?)
}

impl TestCluster {
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        crate::tls_client::install_crypto_provider();
        let dir = TempDir::new(&format!("prefetch-e2e-{test}"))?;
        let (api, kubeconfig) = match std::env::var_os(REAL_CLUSTER_ENV) {
            Some(path) => (None, PathBuf::from(path)),
            None => {
                let api = TestApiServer::start().await?;
                let path = dir.path().join("kubeconfig");
                api.write_kubeconfig(&path)?;
                (Some(api), path)
            }
        };
        let client = client_for(&kubeconfig).await?;
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
            % 100_000;
        let namespace = format!("e2e-{}-{suffix}", test.replace('_', "-"));
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .context("creating the test namespace")?;
        Ok(Self {
            api,
            kubeconfig,
            client,
            namespace,
            dir,
        })
    }

    pub fn is_real(&self) -> bool {
        self.api.is_none()
    }

    /// Deletes the test namespace (a real cluster's garbage collector removes the rest).
    pub async fn cleanup(self) {
        if self.is_real() {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&self.namespace, &DeleteParams::default())
                .await;
        }
    }
}
