//! RBAC checks derived from the calls the real binaries make (see the test API server's
//! per-client request counts), against what the manifests grant.

use std::collections::BTreeSet;
use std::path::Path;

use crate::apiserver::TestApiServer;

/// (API group, resource, verb).
pub type Access = (String, String, String);

/// Every (group, resource, verb) the Roles and ClusterRoles in a manifest file grant.
pub fn granted(manifest: &Path) -> anyhow::Result<BTreeSet<Access>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(manifest)?)?;
    let mut granted = BTreeSet::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in doc["rules"].as_array().into_iter().flatten() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    Ok(granted)
}

/// Every (group, resource, verb) the client with `token` called.
pub fn called(api: &TestApiServer, token: &str) -> BTreeSet<Access> {
    api.request_counts()
        .keys()
        .filter(|k| k.client == token)
        .map(|k| (k.group.to_string(), k.resource.clone(), k.verb.to_string()))
        .collect()
}

/// Fails when `called` needs a grant the manifest lacks, or the manifest grants something
/// never called that is not in `rare` (calls on paths a test cannot reach, each with a reason).
pub fn assert_exact(
    called: &BTreeSet<Access>,
    granted: &BTreeSet<Access>,
    rare: &[(&str, &str, &str)],
) {
    let missing: Vec<_> = called.difference(granted).collect();
    assert!(
        missing.is_empty(),
        "the binary calls what the manifests do not grant: {missing:?}"
    );
    let rare: BTreeSet<Access> = rare
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let unused: Vec<_> = granted
        .difference(called)
        .filter(|g| !rare.contains(*g))
        .collect();
    assert!(
        unused.is_empty(),
        "the manifests grant more than the binary calls: {unused:?}"
    );
}
