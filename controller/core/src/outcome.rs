//! What a prefetch pod says about each of its images, read from its status.

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec};

use crate::pod::container_name;

/// Waiting reasons that mean the kubelet could not pull the image.
pub const PULL_FAILURE_REASONS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The image is on the node; `image_id` is what the kubelet reported (digest).
    Pulled {
        image_id: Option<String>,
    },
    Failed {
        reason: String,
        message: String,
    },
}

/// Per image of the pod (in container order): its outcome, if known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    pub images: Vec<(String, Option<Outcome>)>,
    /// Every image has an outcome: the pod can be deleted once they are recorded.
    pub finished: bool,
}

fn failed(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        reason: reason.to_string(),
        message: message.into(),
    }
}

fn container_outcome(status: Option<&ContainerStatus>) -> Option<Outcome> {
    let state = status?.state.as_ref()?;
    if let Some(terminated) = &state.terminated {
        return Some(if terminated.exit_code == 0 {
            Outcome::Pulled {
                image_id: status
                    .map(|s| s.image_id.clone())
                    .filter(|id| !id.is_empty()),
            }
        } else {
            failed(
                terminated.reason.as_deref().unwrap_or("Error"),
                terminated
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", terminated.exit_code)),
            )
        });
    }
    let waiting = state.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    PULL_FAILURE_REASONS
        .contains(&reason)
        .then(|| failed(reason, waiting.message.clone().unwrap_or_default()))
}

/// The image a prefetch container pulls: the image volume it mounts (`true`), if any, else its
/// own image.
fn pulled_image(spec: &PodSpec, container: &Container) -> (String, bool) {
    let volume_image = container.volume_mounts.iter().flatten().find_map(|mount| {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)?;
        volume.image.as_ref()?.reference.clone()
    });
    match volume_image {
        Some(image) => (image, true),
        None => (container.image.clone().unwrap_or_default(), false),
    }
}

/// Reads a prefetch pod. `past_deadline` is true when the controller's own deadline for the
/// pod has passed (for pods no kubelet ever ran): every open image then fails.
pub fn read_pod(pod: &Pod, past_deadline: bool) -> PodReport {
    // (image, pulled through an image volume)
    let spec_images: Vec<(String, bool)> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| pulled_image(s, c)).collect())
        .unwrap_or_default();
    let status = pod.status.as_ref();
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let pod_reason = status.and_then(|s| s.reason.clone());
    let pod_message = status.and_then(|s| s.message.clone()).unwrap_or_default();

    // The init container that installs noop failing to pull fails every image: none can start.
    let init_failure = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .into_iter()
        .flatten()
        .find_map(|s| match container_outcome(Some(s)) {
            Some(Outcome::Failed { reason, message }) => Some(failed(
                &format!("NoopInstall{reason}"),
                format!("init container {}: {message}", s.name),
            )),
            _ => None,
        });

    let images: Vec<(String, Option<Outcome>)> = spec_images
        .into_iter()
        .enumerate()
        .map(|(i, (image, through_volume))| {
            let name = container_name(i);
            let mut outcome = container_outcome(statuses.iter().find(|s| s.name == name));
            if through_volume && let Some(Outcome::Pulled { image_id }) = &mut outcome {
                // The container's imageID is the noop image's, not the volume's.
                *image_id = None;
            }
            if outcome.is_none() {
                outcome = if let Some(init) = &init_failure {
                    Some(init.clone())
                } else if phase == "Failed" {
                    let reason = pod_reason.clone().unwrap_or_else(|| "PodFailed".into());
                    Some(failed(&reason, pod_message.clone()))
                } else if past_deadline {
                    Some(failed(
                        "DeadlineExceeded",
                        "the pod did not finish within pull_timeout",
                    ))
                } else {
                    None
                };
            }
            (image, outcome)
        })
        .collect();
    let finished = phase == "Succeeded" || images.iter().all(|(_, o)| o.is_some());
    PodReport { images, finished }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "pull-0", "image": "docker.io/library/nginx:1.25"},
                {"name": "pull-1", "image": "docker.io/library/redis:7"}
            ]},
            "status": status
        }))
        .unwrap()
    }

    fn terminated(name: &str, code: i32) -> Value {
        json!({"name": name, "image": "x", "imageID": format!("sha256:{name}"), "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }}}})
    }

    fn waiting(name: &str, reason: &str) -> Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"waiting": {"reason": reason, "message": format!("{reason} for {name}")}}})
    }

    #[test]
    fn terminated_zero_is_pulled_with_its_digest() {
        let report = read_pod(
            &pod(
                json!({"phase": "Succeeded", "containerStatuses": [terminated("pull-0", 0), terminated("pull-1", 0)]}),
            ),
            false,
        );
        assert!(report.finished);
        assert_eq!(
            report.images[0],
            (
                "docker.io/library/nginx:1.25".into(),
                Some(Outcome::Pulled {
                    image_id: Some("sha256:pull-0".into())
                })
            )
        );
    }

    #[test]
    fn pull_errors_fail_only_their_image() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            let report = read_pod(
                &pod(
                    json!({"phase": "Pending", "containerStatuses": [waiting("pull-0", reason), waiting("pull-1", "ContainerCreating")]}),
                ),
                false,
            );
            assert!(!report.finished, "redis is still pulling");
            assert_eq!(
                report.images[0].1,
                Some(Outcome::Failed {
                    reason: reason.into(),
                    message: format!("{reason} for pull-0")
                })
            );
            assert_eq!(report.images[1].1, None);
        }
        let done = read_pod(
            &pod(
                json!({"phase": "Pending", "containerStatuses": [waiting("pull-0", "ImagePullBackOff"), terminated("pull-1", 0)]}),
            ),
            false,
        );
        assert!(
            done.finished,
            "every image has an outcome: no need to wait for the deadline"
        );
    }

    #[test]
    fn deadline_and_pod_failure_fail_the_open_images() {
        let kubelet_deadline = pod(
            json!({"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active on the node longer than the specified deadline",
            "containerStatuses": [terminated("pull-0", 0), waiting("pull-1", "ContainerCreating")]}),
        );
        let report = read_pod(&kubelet_deadline, false);
        assert!(report.finished);
        assert!(matches!(report.images[0].1, Some(Outcome::Pulled { .. })));
        assert!(
            matches!(&report.images[1].1, Some(Outcome::Failed { reason, .. }) if reason == "DeadlineExceeded")
        );

        let never_scheduled = pod(json!({"phase": "Pending"}));
        assert!(!read_pod(&never_scheduled, false).finished);
        let report = read_pod(&never_scheduled, true);
        assert!(report.finished);
        assert!(report.images.iter().all(|(_, o)| matches!(o, Some(Outcome::Failed { reason, .. }) if reason == "DeadlineExceeded")));

        let evicted = read_pod(
            &pod(json!({"phase": "Failed", "reason": "Evicted", "message": "low on disk"})),
            false,
        );
        assert!(
            matches!(&evicted.images[0].1, Some(Outcome::Failed { reason, message }) if reason == "Evicted" && message == "low on disk")
        );
    }

    #[test]
    fn non_zero_exit_is_a_failure_and_noop_install_failure_fails_all() {
        let report = read_pod(
            &pod(
                json!({"phase": "Failed", "containerStatuses": [terminated("pull-0", 1), terminated("pull-1", 0)]}),
            ),
            false,
        );
        assert!(
            matches!(&report.images[0].1, Some(Outcome::Failed { reason, .. }) if reason == "Error")
        );
        let init = read_pod(
            &pod(
                json!({"phase": "Pending", "initContainerStatuses": [waiting("install-noop", "ImagePullBackOff")]}),
            ),
            false,
        );
        assert!(init.finished);
        assert!(init.images.iter().all(|(_, o)| matches!(o, Some(Outcome::Failed { reason, .. }) if reason == "NoopInstallImagePullBackOff")));
    }
}
