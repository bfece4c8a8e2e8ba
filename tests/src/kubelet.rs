//! Plays the kubelet for the in-process cluster: finds prefetch pods, "pulls" their images
//! and writes container statuses as the kubelet would, and adds pulled images to the node's
//! `status.images`. Against a real cluster the real kubelet does this and this is not run.
//!
//! Like the kubelet (`nodestatus.Images`, with its default `--node-status-max-images`), it lists
//! at most [`NODE_STATUS_MAX_IMAGES`] images per node: those it holds, sorted by size, largest
//! first (the image manager's order), the rest left out. What a node holds is what it listed
//! when the fake kubelet first pulled there, plus what it pulled since.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long the fake kubelet says each pull took, in its `Pulled` Events.
pub const PULL_SECONDS: f64 = 1.5;

/// A `Pulled` Event for a pod, as the kubelet's legacy event recorder writes it (core/v1, named
/// `<pod>.<hex>`, with its source, times and a count of 1). `field_path` names the container
/// (`spec.containers{web}`); an image volume's pull names the pod alone (`None`).
pub async fn emit_pulled(
    client: &Client,
    pod: &Pod,
    field_path: Option<&str>,
    node: &str,
    message: &str,
) -> anyhow::Result<()> {
    let namespace = pod.namespace().unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let serial = EVENT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut involved = json!({"kind": "Pod", "apiVersion": "v1", "namespace": namespace,
                              "name": pod.name_any(), "uid": pod.uid()});
    if let Some(path) = field_path {
        involved["fieldPath"] = json!(path);
    }
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": format!("{}.{serial:016x}", pod.name_any()), "namespace": namespace},
        "involvedObject": involved,
        "reason": "Pulled",
        "message": message,
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Normal",
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    }))?;
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &namespace)
        .create(&kube::api::PostParams::default(), &event)
        .await?;
    Ok(())
}

/// The kubelet's message for a pull it made (`Successfully pulled image ...`).
pub fn pulled_message(image: &str, seconds: f64, size_bytes: i64) -> String {
    format!(
        "Successfully pulled image \"{image}\" in {seconds}s ({seconds}s including waiting). Image size: {size_bytes} bytes."
    )
}

/// The kubelet's message for an image it found on the node.
pub fn present_message(image: &str) -> String {
    format!("Container image \"{image}\" already present on machine")
}

static EVENT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What the fake kubelet does with one image on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    Succeed,
    /// Waiting with this reason (ErrImagePull, ImagePullBackOff, ...).
    Fail(&'static str),
    /// Leave the pod pending.
    Hang,
    /// Pull successfully, this long after the pod was first seen (a slow registry or a large
    /// image). Until then the pod is pending, as with `Hang`.
    SucceedAfter(Duration),
}

pub type Rule = Arc<dyn Fn(&str, &str) -> Pull + Send + Sync>;

/// The image of the image volume `container` mounts, if it mounts one.
fn image_volume_of(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    container: &k8s_openapi::api::core::v1::Container,
) -> Option<String> {
    container.volume_mounts.iter().flatten().find_map(|mount| {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)?;
        volume.image.as_ref()?.reference.clone()
    })
}

/// The kubelet's default `--node-status-max-images`.
pub const NODE_STATUS_MAX_IMAGES: usize = 50;

/// Size of an image the fake kubelet pulls: small, so a node listing 50 larger images never
/// lists it.
pub const PULLED_SIZE: i64 = 1000;

/// What a node lists of the images it holds: the largest [`NODE_STATUS_MAX_IMAGES`], largest
/// first (a stable sort: equal sizes keep their order).
pub fn listed(held: &[Value]) -> Vec<Value> {
    let mut sorted = held.to_vec();
    sorted.sort_by_key(|i| std::cmp::Reverse(i["sizeBytes"].as_i64().unwrap_or(0)));
    sorted.truncate(NODE_STATUS_MAX_IMAGES);
    sorted
}

pub struct FakeKubelet {
    stop: CancellationToken,
    /// (pod uid, node) of every prefetch pod seen: names repeat across rounds, uids do not.
    pub seen: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A digest reference for `image`, stable per image, as a kubelet reports in `imageID`.
pub fn digest_of(image: &str) -> String {
    let repository = prefetch_common::images::ImageRef::parse(image)
        .map_or_else(|_| image.to_string(), |r| r.repository());
    let hash: u64 = image.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{repository}@sha256:{hash:016x}{hash:016x}{hash:016x}{hash:016x}")
}

impl FakeKubelet {
    pub fn start(client: Client, rule: Rule) -> Self {
        let stop = CancellationToken::new();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (token, record) = (stop.clone(), seen.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client.clone());
            let nodes: Api<Node> = Api::all(client.clone());
            let selector =
                ListParams::default().labels("app.kubernetes.io/managed-by=prefetch-controller");
            let mut first_seen: std::collections::HashMap<String, tokio::time::Instant> =
                std::collections::HashMap::new();
            // node uid -> every image it holds (listed or not).
            let mut held: std::collections::HashMap<String, Vec<Value>> =
                std::collections::HashMap::new();
            // pod uid -> containers reported ended; (pod uid, image) already added to a node.
            let mut reported: std::collections::HashMap<String, usize> =
                std::collections::HashMap::new();
            let mut added: BTreeSet<(String, String)> = BTreeSet::new();
            // (pod uid, container) whose pull was reported in an Event.
            let mut announced: BTreeSet<(String, String)> = BTreeSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let Ok(list) = pods.list(&selector).await else {
                    continue;
                };
                for pod in list.items {
                    let uid = pod.uid().unwrap_or_default();
                    let containers_total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
                    if reported
                        .get(&uid)
                        .is_some_and(|done| *done >= containers_total)
                    {
                        continue;
                    }
                    let node = pod
                        .annotations()
                        .get("cache.techsquad.rocks/node")
                        .cloned()
                        .unwrap_or_default();
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((pod.uid().unwrap_or_default(), node.clone()));
                    let spec = pod.spec.clone().unwrap_or_default();
                    let containers = spec.containers.clone();
                    let age = first_seen
                        .entry(pod.uid().unwrap_or_default())
                        .or_insert_with(tokio::time::Instant::now)
                        .elapsed();
                    // (container, image it pulls, verdict): a container mounting an image
                    // volume pulls the volume's image, as the kubelet does before starting it.
                    let verdicts: Vec<(String, String, Pull)> = containers
                        .iter()
                        .map(|c| {
                            let image = image_volume_of(&spec, c)
                                .unwrap_or_else(|| c.image.clone().unwrap_or_default());
                            let verdict = match rule(&node, &image) {
                                Pull::SucceedAfter(delay) if age >= delay => Pull::Succeed,
                                Pull::SucceedAfter(_) => Pull::Hang,
                                other => other,
                            };
                            (c.name.clone(), image, verdict)
                        })
                        .collect();
                    // Like the kubelet, report each container as it ends (its image pulled, or
                    // the pull failed), not the whole pod at once: a pod pulling a slow image
                    // beside a quick one shows the quick one done.
                    let ended = verdicts.iter().filter(|(_, _, v)| *v != Pull::Hang).count();
                    if ended == 0 || reported.get(&uid).is_some_and(|done| *done >= ended) {
                        continue;
                    }
                    reported.insert(uid.clone(), ended);
                    let statuses: Vec<Value> = verdicts
                        .iter()
                        .map(|(name, image, verdict)| {
                            let state = match verdict {
                                Pull::Succeed => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                                Pull::Fail(reason) => json!({"waiting": {"reason": reason, "message": format!("{reason}: {image}")}}),
                                Pull::Hang | Pull::SucceedAfter(_) => json!({"waiting": {"reason": "ContainerCreating"}}),
                            };
                            // The status names the container's own image (the noop image's, for a
                            // container that mounts an image volume), as the kubelet's does.
                            let own = containers.iter().find(|c| &c.name == name).and_then(|c| c.image.clone()).unwrap_or_default();
                            let image_id = if *verdict == Pull::Succeed { digest_of(&own) } else { String::new() };
                            json!({"name": name, "image": own, "imageID": image_id, "ready": false, "restartCount": 0, "state": state})
                        })
                        .collect();
                    let all_ok = verdicts.iter().all(|(_, _, v)| *v == Pull::Succeed);
                    let status = json!({"status": {"phase": if all_ok { "Succeeded" } else { "Pending" }, "containerStatuses": statuses}});
                    let ns = pod.namespace().unwrap_or_default();
                    let _ = Api::<Pod>::namespaced(client.clone(), &ns)
                        .patch_status(
                            &pod.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(status),
                        )
                        .await;
                    // Each pull made now, reported as the kubelet reports it: an Event naming
                    // the container, or the pod alone for an image volume's pull.
                    for (name, image, _) in verdicts.iter().filter(|(_, _, v)| *v == Pull::Succeed)
                    {
                        if !announced.insert((uid.clone(), name.clone())) {
                            continue;
                        }
                        let own = containers
                            .iter()
                            .find(|c| &c.name == name)
                            .and_then(|c| c.image.clone());
                        let field_path = format!("spec.containers{{{name}}}");
                        let path =
                            (own.as_deref() == Some(image.as_str())).then_some(field_path.as_str());
                        let message = pulled_message(image, PULL_SECONDS, PULLED_SIZE);
                        let _ = emit_pulled(&client, &pod, path, &node, &message).await;
                    }
                    // Pulled images show up in the node's status, as the kubelet reports them.
                    let pulled: Vec<String> = verdicts
                        .iter()
                        .filter(|(_, _, v)| *v == Pull::Succeed)
                        .map(|(_, i, _)| i.clone())
                        .filter(|image| added.insert((uid.clone(), image.clone())))
                        .collect();
                    if !pulled.is_empty()
                        && let Ok(current) = nodes.get(&node).await
                    {
                        let images = held
                            .entry(current.uid().unwrap_or_default())
                            .or_insert_with(|| {
                                current
                                    .status
                                    .and_then(|s| s.images)
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(|i| json!({"names": i.names, "sizeBytes": i.size_bytes}))
                                    .collect()
                            });
                        for image in pulled {
                            images.push(
                                json!({"names": [digest_of(&image), image], "sizeBytes": PULLED_SIZE}),
                            );
                        }
                        let images = listed(images);
                        let _ = nodes
                            .patch_status(
                                &node,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"status": {"images": images}})),
                            )
                            .await;
                    }
                }
            }
        });
        Self { stop, seen }
    }

    pub fn seen_nodes(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Prefetch pods seen on `node`.
    pub fn seen_on(&self, node: &str) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, n)| n == node)
            .count()
    }

    pub fn seen_pods(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
