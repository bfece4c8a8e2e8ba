use super::*;
use prefetch_common::PrefetchSpec;
use serde_json::{Value, json};

fn prefetch(spec: Value) -> Prefetch {
    let mut base = json!({"filter_by_labels": {"app": "nginx"}});
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    let spec: PrefetchSpec = serde_json::from_value(base).unwrap();
    let mut p = Prefetch::new("prefetch-sample", spec);
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some("uid-1".into());
    p
}

fn build(p: &Prefetch, images: &[&str], secrets: &[&str]) -> Pod {
    let images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    prefetch_pod(&PodRequest {
        prefetch: p,
        node: "kind-worker",
        images: &images,
        pull_secrets: &secrets,
        through_volumes: &BTreeSet::new(),
        noop_image: "kube-prefetch/noop:dev",
        warmup_taint: None,
    })
    .unwrap()
}

#[test]
fn shape_follows_the_design() {
    let p = prefetch(json!({"pull_timeout": 120, "priority_class_name": "low",
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}));
    let pod = build(
        &p,
        &[
            "docker.io/library/nginx:1.25",
            "docker.io/library/redis:latest",
        ],
        &["regcred", "other", "regcred"],
    );
    let v = serde_json::to_value(&pod).unwrap();
    assert_eq!(
        v["metadata"]["name"],
        "prefetch-prefetch-sample-kind-worker"
    );
    assert_eq!(v["metadata"]["namespace"], "default");
    assert_eq!(
        v["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "prefetch-controller", "cache.techsquad.rocks/prefetch": "prefetch-sample"})
    );
    assert_eq!(
        v["metadata"]["ownerReferences"],
        json!([{"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch", "name": "prefetch-sample", "uid": "uid-1", "controller": true}])
    );
    let spec = &v["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["activeDeadlineSeconds"], 120);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["enableServiceLinks"], false);
    assert_eq!(spec["priorityClassName"], "low");
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "other"}, {"name": "regcred"}])
    );
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["kind-worker"]}]}])
    );
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "pull-0");
    assert_eq!(containers[0]["image"], "docker.io/library/nginx:1.25");
    assert_eq!(containers[0]["command"], json!(["/prefetch/noop"]));
    assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        containers[1]["imagePullPolicy"], "Always",
        ":latest is always pulled"
    );
    assert!(containers[0]["resources"]["limits"]["memory"].is_string());
    let init = &spec["initContainers"][0];
    assert_eq!(init["image"], "kube-prefetch/noop:dev");
    assert_eq!(
        init["command"],
        json!(["/noop", "--install-to", "/prefetch/noop"])
    );
    assert_eq!(
        v["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "true"
    );
    assert_eq!(spec["volumes"][0]["emptyDir"]["sizeLimit"], "1Mi");
}

#[test]
fn tolerates_the_warmup_taint_and_nothing_more() {
    let key = crate::taint::DEFAULT_WARMUP_TAINT;
    let build = |p: &Prefetch| {
        let images = vec!["docker.io/library/nginx:1.25".to_string()];
        let pod = prefetch_pod(&PodRequest {
            prefetch: p,
            node: "kind-worker4",
            images: &images,
            pull_secrets: &[],
            through_volumes: &BTreeSet::new(),
            noop_image: "x",
            warmup_taint: Some(key),
        })
        .unwrap();
        serde_json::to_value(pod).unwrap()["spec"]["tolerations"].clone()
    };
    let warming = json!({"key": key, "operator": "Exists", "effect": "NoSchedule"});
    assert_eq!(build(&prefetch(json!({}))), json!([warming]));
    let own =
        json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"});
    assert_eq!(
        build(&prefetch(json!({"tolerations": [own]}))),
        json!([own, warming])
    );
    assert_eq!(
        build(&prefetch(json!({"tolerations": [warming]}))),
        json!([warming]),
        "not twice"
    );
}

#[test]
fn refuses_incomplete_requests() {
    let mut p = prefetch(json!({}));
    let err = prefetch_pod(&PodRequest {
        prefetch: &p,
        node: "n",
        images: &[],
        pull_secrets: &[],
        through_volumes: &BTreeSet::new(),
        noop_image: "x",
        warmup_taint: None,
    })
    .unwrap_err();
    assert_eq!(err, PodError::NoImages("n".into()));
    p.metadata.uid = None;
    let images = vec!["docker.io/library/nginx:1".to_string()];
    let err = prefetch_pod(&PodRequest {
        prefetch: &p,
        node: "n",
        images: &images,
        pull_secrets: &[],
        through_volumes: &BTreeSet::new(),
        noop_image: "x",
        warmup_taint: None,
    })
    .unwrap_err();
    assert_eq!(err, PodError::MissingMetadata("uid"));
}

/// The Pod Security Standards' baseline and restricted controls
/// (kubernetes.io/docs/concepts/security/pod-security-standards), as far as a pod spec
/// shows them. Returns each violated control.
fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut v = Vec::new();
    let spec = pod.spec.as_ref().unwrap();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        v.push("host namespaces".into());
    }
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    if pod_sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        v.push("sysctls".into());
    }
    if pod_sc.run_as_user == Some(0) {
        v.push("runAsUser 0".into());
    }
    for volume in spec.volumes.iter().flatten() {
        let allowed = volume.config_map.is_some()
            || volume.csi.is_some()
            || volume.downward_api.is_some()
            || volume.empty_dir.is_some()
            || volume.ephemeral.is_some()
            || volume.persistent_volume_claim.is_some()
            || volume.projected.is_some()
            || volume.secret.is_some();
        if !allowed {
            v.push(format!("volume type of {}", volume.name));
        }
    }
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{}: privileged", c.name));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            v.push(format!("{}: hostPort", c.name));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!(
                "{}: allowPrivilegeEscalation must be false",
                c.name
            ));
        }
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) != Some(true) {
            v.push(format!("{}: runAsNonRoot must be true", c.name));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{}: runAsUser 0", c.name));
        }
        let seccomp = sc
            .seccomp_profile
            .or(pod_sc.seccomp_profile.clone())
            .map(|p| p.type_);
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            v.push(format!(
                "{}: seccompProfile must be RuntimeDefault or Localhost",
                c.name
            ));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{}: capabilities must drop ALL", c.name));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            v.push(format!(
                "{}: capabilities may add only NET_BIND_SERVICE",
                c.name
            ));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            v.push(format!("{}: procMount", c.name));
        }
    }
    v
}

#[test]
fn passes_pod_security_restricted() {
    let p = prefetch(json!({}));
    let pod = build(&p, &["docker.io/library/nginx:1.25", "ghcr.io/a/b:1"], &[]);
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    // The checker itself catches what it should.
    let mut bad = pod.clone();
    let spec = bad.spec.as_mut().unwrap();
    spec.host_network = Some(true);
    spec.containers[0].security_context = None;
    spec.security_context = None;
    let found = restricted_violations(&bad);
    assert!(found.contains(&"host namespaces".to_string()), "{found:?}");
    assert!(
        found.contains(&"pull-0: allowPrivilegeEscalation must be false".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"pull-0: seccompProfile must be RuntimeDefault or Localhost".to_string()),
        "{found:?}"
    );
}

#[test]
fn an_artifact_is_mounted_as_an_image_volume_and_nothing_of_it_runs() {
    let p = prefetch(json!({}));
    let images = vec![
        "docker.io/library/nginx:1.25".to_string(),
        "registry.example/models/llama:v1".to_string(),
    ];
    let through_volumes: BTreeSet<String> = [images[1].clone()].into();
    let pod = prefetch_pod(&PodRequest {
        prefetch: &p,
        node: "n",
        images: &images,
        pull_secrets: &[],
        through_volumes: &through_volumes,
        noop_image: "kube-prefetch/noop:dev",
        warmup_taint: None,
    })
    .unwrap();
    let v = serde_json::to_value(&pod).unwrap();
    let weights = &v["spec"]["containers"][1];
    assert_eq!(weights["name"], "pull-1");
    assert_eq!(
        weights["image"], "kube-prefetch/noop:dev",
        "runs noop, not the artifact"
    );
    assert_eq!(weights["command"], json!([NOOP_PATH]));
    assert_eq!(
        weights["volumeMounts"][1],
        json!({"name": "image-1", "mountPath": "/prefetch-image", "readOnly": true})
    );
    assert_eq!(
        v["spec"]["volumes"][1],
        json!({"name": "image-1", "image": {"reference": "registry.example/models/llama:v1", "pullPolicy": "IfNotPresent"}})
    );
    assert_eq!(
        v["spec"]["containers"][0]["image"],
        "docker.io/library/nginx:1.25"
    );
    assert_eq!(v["spec"]["volumes"].as_array().unwrap().len(), 2);
    // The restricted profile still holds: the container is the same but for its image.
    assert_eq!(
        weights["securityContext"],
        v["spec"]["containers"][0]["securityContext"]
    );
}
