//! Test harness for kube-prefetch: a Kubernetes test API server, a TLS client that verifies
//! the webhook as the API server would (CA pinned), and helpers to run the real binaries.

pub mod apiserver;
pub mod binaries;
pub mod cluster;
pub mod fixtures;
pub mod kubelet;
pub mod manifests;
pub mod promql;
pub mod rbac;
pub mod repo;
pub mod rollout;
pub mod scenario;
pub mod stall;
pub mod tls_client;
