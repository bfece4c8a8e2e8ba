//! Pulling an image through an image volume (`volumes[].image`): the kubelet pulls an image
//! volume's image as it pulls a container's, without running anything of it, so an image with
//! no runnable file (model weights, data) can be prefetched. A prefetch pod mounts such an
//! image (see [`artifacts`]) in a container that runs `noop` from the noop image, instead of
//! running `noop` inside the image, on the nodes that support image volumes (see
//! [`pulls_through_image_volumes`]).
//!
//! Which nodes: a kubelet of 1.36 or later, where the ImageVolume feature is GA and locked on
//! (1.35 has it on by default but it can be switched off, and then the pod would be refused),
//! with a container runtime that implements it: containerd 2.1 or later, CRI-O 1.31 or later.
//! Any other node runs `noop` inside the image, as before: that fails for an image with no
//! runnable file, and says so in the status, but works for every image that has one.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

/// The first kubelet release whose ImageVolume feature cannot be switched off.
const KUBELET: (u64, u64) = (1, 36);
/// The first releases of each container runtime that mount image volumes.
const RUNTIMES: [(&str, (u64, u64)); 2] = [("containerd", (2, 1)), ("cri-o", (1, 31))];

/// Whether a prefetch pod on `node` may pull through image volumes (see the module comment).
pub fn pulls_through_image_volumes(node: &Node) -> bool {
    let Some(info) = node.status.as_ref().and_then(|s| s.node_info.as_ref()) else {
        return false;
    };
    let kubelet = version(&info.kubelet_version).is_some_and(|v| v >= KUBELET);
    let runtime = info
        .container_runtime_version
        .split_once("://")
        .is_some_and(|(name, text)| {
            let least = RUNTIMES.iter().find(|(known, _)| *known == name);
            least.is_some_and(|(_, least)| version(text).is_some_and(|v| v >= *least))
        });
    kubelet && runtime
}

/// `major.minor` of a version as nodes report it (`v1.36.2`, `2.1.4`, `1.31.0-rc.1`).
fn version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim_start_matches('v').split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The images only ever mounted as image volumes: no selected workload runs them as a
/// container, so they may have nothing to run. (`volume_images` and `container_images` are
/// normalized; a declared image counts as a container's.)
pub fn artifacts(
    volume_images: &BTreeSet<String>,
    container_images: &BTreeSet<String>,
) -> BTreeSet<String> {
    volume_images
        .difference(container_images)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(kubelet: &str, runtime: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"nodeInfo": {
            "kubeletVersion": kubelet, "containerRuntimeVersion": runtime,
            "architecture": "amd64", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
            "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}}))
        .unwrap()
    }

    #[test]
    fn nodes_with_a_136_kubelet_and_a_runtime_that_mounts_images_pull_through_volumes() {
        for (kubelet, runtime, through) in [
            ("v1.36.0", "containerd://2.1.0", true),
            ("v1.37.1", "containerd://2.2.3", true),
            ("v1.36.2", "cri-o://1.31.4", true),
            ("v1.36.0-rc.1", "cri-o://1.36.0", true),
            ("v1.35.4", "containerd://2.1.0", false),
            ("v1.36.0", "containerd://2.0.5", false),
            ("v1.36.0", "containerd://1.7.24", false),
            ("v1.36.0", "cri-o://1.30.9", false),
            ("v1.36.0", "docker://27.1.0", false),
            ("v1.36.0", "containerd", false),
            ("unknown", "containerd://2.1.0", false),
        ] {
            assert_eq!(
                pulls_through_image_volumes(&node(kubelet, runtime)),
                through,
                "{kubelet} {runtime}"
            );
        }
        let no_info: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert!(!pulls_through_image_volumes(&no_info));
    }

    #[test]
    fn an_image_some_workload_runs_is_no_artifact() {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            artifacts(&set(&["weights:1", "tools:1"]), &set(&["tools:1", "web:1"])),
            set(&["weights:1"])
        );
    }
}
