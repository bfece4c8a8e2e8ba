use super::*;
use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{Value, json};

fn prefetch(ns: &str, spec: Value) -> Prefetch {
    let mut p = Prefetch::new("p", serde_json::from_value(spec).unwrap());
    p.metadata.namespace = Some(ns.into());
    p
}

fn deployment(
    ns: &str,
    name: &str,
    labels: Value,
    images: &[&str],
    init: &[&str],
    secrets: &[&str],
) -> Deployment {
    let containers: Vec<Value> = images
        .iter()
        .map(|i| json!({"name": "c", "image": i}))
        .collect();
    let inits: Vec<Value> = init
        .iter()
        .map(|i| json!({"name": "i", "image": i}))
        .collect();
    let secrets: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
    serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": {}, "template": {"spec": {"containers": containers, "initContainers": inits, "imagePullSecrets": secrets}}}
        }))
        .unwrap()
}

fn node(name: &str, taints: Value, images: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": images}
    }))
    .unwrap()
}

fn no_workloads() -> &'static [Deployment] {
    &[]
}

fn no_accounts() -> AccountSecrets {
    AccountSecrets::new()
}

fn walkthrough_nodes() -> Vec<Node> {
    vec![
        node("kind-worker3", json!([]), json!([])),
        node(
            "kind-control-plane",
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
            json!([]),
        ),
        node(
            "kind-worker",
            json!([]),
            json!([{"names": ["docker.io/library/nginx@sha256:0123456789abcdef0123456789abcdef", "docker.io/library/nginx:1.7.9"], "sizeBytes": 1}]),
        ),
        node("kind-worker2", json!([]), json!([])),
    ]
}

#[test]
fn declared_images_are_planned_with_no_workload_using_them() {
    let p = prefetch(
        "default",
        json!({"filter_by_labels": {"app": "nginx"}, "node_filter": "worker",
                   "images": ["redis:7.2", "nginx:1.7.9", "Bad Ref"]}),
    );
    let deployments = [deployment(
        "default",
        "nginx",
        json!({"app": "nginx"}),
        &["docker.io/library/nginx:1.7.9"],
        &[],
        &[],
    )];
    let plan = plan_images(&p, &deployments, &no_accounts(), &walkthrough_nodes(), None);
    assert_eq!(
        plan.images,
        [
            "docker.io/library/nginx:1.7.9",
            "docker.io/library/redis:7.2"
        ],
        "normalized, and one entry for an image both declared and used"
    );
    assert_eq!(plan.invalid_images.len(), 1, "{:?}", plan.invalid_images);
    assert!(plan.invalid_images[0].starts_with("declared: "));
    let worker = plan
        .targets
        .iter()
        .find(|t| t.node == "kind-worker")
        .unwrap();
    assert_eq!(worker.pull, ["docker.io/library/redis:7.2"]);
    // With no selected workload at all, the declared images still are.
    let alone = plan_images(
        &p,
        no_workloads(),
        &no_accounts(),
        &walkthrough_nodes(),
        None,
    );
    assert_eq!(
        alone.images,
        [
            "docker.io/library/nginx:1.7.9",
            "docker.io/library/redis:7.2"
        ]
    );
}

#[test]
fn the_walkthrough() {
    let p = prefetch(
        "default",
        json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"}),
    );
    let deployments = [
        deployment(
            "default",
            "nginx",
            json!({"app": "nginx"}),
            &["nginx:1.7.9"],
            &[],
            &[],
        ),
        deployment(
            "default",
            "redis",
            json!({"app": "redis"}),
            &["redis:7"],
            &[],
            &[],
        ),
        deployment(
            "other",
            "nginx",
            json!({"app": "nginx"}),
            &["nginx:9"],
            &[],
            &[],
        ),
    ];
    let plan = plan_images(&p, &deployments, &no_accounts(), &walkthrough_nodes(), None);
    assert_eq!(plan.workloads, ["Deployment/nginx"]);
    assert_eq!(plan.images, ["docker.io/library/nginx:1.7.9"]);
    let targets: Vec<(&str, usize, usize)> = plan
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t.pull.len(), t.present.len()))
        .collect();
    assert_eq!(
        targets,
        [
            ("kind-worker", 0, 1),
            ("kind-worker2", 1, 0),
            ("kind-worker3", 1, 0)
        ]
    );
    assert_eq!(
        plan.skipped,
        [Skipped {
            node: "kind-control-plane".into(),
            reason: SkipReason::NameFilter {
                filter: "worker".into()
            }
        }]
    );
    assert_eq!(plan.total_pairs(), 3);
}

#[test]
fn images_and_secrets_are_the_union_of_selected_deployments() {
    let p = prefetch("default", json!({"filter_by_labels": {"tier": "web"}}));
    let deployments = [
        deployment(
            "default",
            "b",
            json!({"tier": "web"}),
            &["nginx:1.25", "envoyproxy/envoy:v1.31.0"],
            &["busybox"],
            &["regcred"],
        ),
        deployment(
            "default",
            "a",
            json!({"tier": "web", "x": "y"}),
            &["docker.io/library/nginx:1.25", "Bad:Ref"],
            &[],
            &["regcred", "other"],
        ),
    ];
    let plan = plan_images(&p, &deployments, &no_accounts(), &[], None);
    assert_eq!(plan.workloads, ["Deployment/a", "Deployment/b"]);
    assert_eq!(
        plan.images,
        [
            "docker.io/envoyproxy/envoy:v1.31.0",
            "docker.io/library/busybox:latest",
            "docker.io/library/nginx:1.25"
        ]
    );
    assert_eq!(plan.pull_secrets, ["other", "regcred"]);
    assert_eq!(plan.invalid_images.len(), 1);
    assert!(
        plan.invalid_images[0].starts_with("Deployment/a: invalid image reference \"Bad:Ref\"")
    );
}

/// `deployment` running as the ServiceAccount `account` (`None`: unset, so `default`).
fn running_as(mut d: Deployment, account: Option<&str>) -> Deployment {
    let template = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    template.service_account_name = account.map(String::from);
    d
}

fn accounts(entries: &[(&str, &[&str])]) -> AccountSecrets {
    entries
        .iter()
        .map(|(name, secrets)| {
            let secrets = secrets.iter().map(|s| s.to_string()).collect();
            (name.to_string(), secrets)
        })
        .collect()
}

#[test]
fn pods_without_listed_secrets_bring_their_service_accounts() {
    let p = prefetch("default", json!({"filter_by_labels": {"tier": "web"}}));
    let web = json!({"tier": "web"});
    let workloads = [
        // Lists its own: its pods get only those, whatever its account holds.
        running_as(
            deployment("default", "a", web.clone(), &["a:1"], &[], &["tpl-regcred"]),
            Some("builder"),
        ),
        running_as(
            deployment("default", "b", web.clone(), &["b:1"], &[], &[]),
            Some("builder"),
        ),
        running_as(
            deployment("default", "c", web.clone(), &["c:1"], &[], &[]),
            None,
        ),
        running_as(
            deployment("default", "d", web.clone(), &["d:1"], &[], &[]),
            Some("gone"),
        ),
    ];
    let known = accounts(&[
        ("builder", &["sa-regcred", "tpl-regcred"]),
        ("default", &["default-regcred"]),
        ("unused", &["never"]),
    ]);
    let plan = plan_images(&p, &workloads, &known, &[], None);
    assert_eq!(
        plan.pull_secrets,
        ["default-regcred", "sa-regcred", "tpl-regcred"],
        "sorted, de-duplicated; an account no selected workload runs as brings nothing"
    );
    assert_eq!(
        plan.missing_accounts,
        BTreeSet::from(["gone".to_string()]),
        "a missing account is noted, not an error"
    );
    assert_eq!(plan.images.len(), 4, "its workload is planned all the same");
}

#[test]
fn the_service_account_is_named_as_the_api_server_defaults_it() {
    let spec = |v: Value| -> PodSpec { serde_json::from_value(v).unwrap() };
    let named = spec(json!({"containers": [], "serviceAccountName": "a", "serviceAccount": "b"}));
    let alias = spec(json!({"containers": [], "serviceAccountName": "", "serviceAccount": "b"}));
    let unset = spec(json!({"containers": []}));
    assert_eq!(service_account_name(&named), "a");
    assert_eq!(service_account_name(&alias), "b", "the deprecated alias");
    assert_eq!(service_account_name(&unset), "default");
    let known = accounts(&[("b", &["b-regcred"])]);
    assert_eq!(pods_pull_secrets(&alias, &known), Ok(vec!["b-regcred"]));
    assert_eq!(pods_pull_secrets(&named, &known), Err("a"));
}

#[test]
fn a_workload_left_out_by_kinds_brings_no_secrets() {
    let p = prefetch(
        "default",
        json!({"filter_by_labels": {"tier": "web"}, "kinds": ["Deployment"]}),
    );
    let cron: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "report", "namespace": "default", "labels": {"tier": "web"}},
        "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "r:1"}], "serviceAccountName": "reporter",
            "imagePullSecrets": [{"name": "cron-regcred"}]}}}}}
    }))
    .unwrap();
    let web = deployment("default", "web", json!({"tier": "web"}), &["w:1"], &[], &[]);
    let known = accounts(&[("reporter", &["reporter-regcred"]), ("default", &["d"])]);
    let workloads = [Workload::from(&cron), Workload::from(&web)];
    let plan = plan_images(&p, workloads, &known, &[], None);
    assert_eq!(plan.workloads, ["Deployment/web"]);
    assert_eq!(plan.pull_secrets, ["d"]);
}

#[test]
fn account_secrets_reads_one_namespace() {
    let account = |ns: &str, name: &str, secrets: Value| -> ServiceAccount {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                                          "imagePullSecrets": secrets}))
        .unwrap()
    };
    let all = [
        account(
            "default",
            "builder",
            json!([{"name": "sa-regcred"}, {"name": ""}]),
        ),
        account("default", "default", json!(null)),
        account("other", "builder", json!([{"name": "elsewhere"}])),
    ];
    assert_eq!(
        account_secrets(&all, "default"),
        accounts(&[("builder", &["sa-regcred"]), ("default", &[])])
    );
}

#[test]
fn the_whole_status_names_a_bounded_number_of_sources() {
    let sources: BTreeMap<String, BTreeSet<String>> = (0..300)
        .map(|i| {
            let users = (0..5).map(|w| format!("Deployment/w-{w}")).collect();
            (format!("img-{i:03}:1"), users)
        })
        .collect();
    let all = all_status_sources(&sources);
    assert_eq!(all.len(), 300, "every image keeps an entry");
    let named: usize = all
        .values()
        .flatten()
        .filter(|s| !s.starts_with('+'))
        .count();
    assert_eq!(named, MAX_STATUS_SOURCES_TOTAL);
    assert_eq!(all["img-299:1"], ["+5 more"]);
    assert_eq!(all["img-000:1"].len(), 5);
}

#[test]
fn status_sources_are_capped_with_a_count_of_the_rest() {
    let workloads = |n: usize| -> BTreeSet<String> {
        (0..n).map(|i| format!("Deployment/web-{i:04}")).collect()
    };
    let fits = workloads(MAX_STATUS_SOURCES);
    assert_eq!(status_sources(&fits).len(), MAX_STATUS_SOURCES);
    let many = workloads(1000);
    let listed = status_sources(&many);
    assert_eq!(listed.len(), MAX_STATUS_SOURCES);
    assert_eq!(listed[0], "Deployment/web-0000");
    assert_eq!(listed[8], "Deployment/web-0008");
    assert_eq!(listed[9], "+991 more");
    let mut declared_too = many;
    declared_too.insert(DECLARED.into());
    let listed = status_sources(&declared_too);
    assert_eq!(listed.len(), MAX_STATUS_SOURCES);
    assert_eq!(&listed[7..], ["Deployment/web-0007", DECLARED, "+992 more"]);
}

#[test]
fn control_plane_is_targeted_only_when_tolerated_and_filter_is_empty() {
    let p = prefetch(
        "default",
        json!({"filter_by_labels": {"app": "nginx"},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}),
    );
    let plan = plan_images(
        &p,
        no_workloads(),
        &no_accounts(),
        &walkthrough_nodes(),
        None,
    );
    assert_eq!(plan.targets.len(), 4);
    let p = prefetch("default", json!({"filter_by_labels": {"app": "nginx"}}));
    let plan = plan_images(
        &p,
        no_workloads(),
        &no_accounts(),
        &walkthrough_nodes(),
        None,
    );
    assert_eq!(plan.targets.len(), 3);
    assert!(matches!(plan.skipped[0].reason, SkipReason::Taint { .. }));
}

#[test]
fn warming_nodes_are_targeted_and_marked() {
    let key = crate::taint::DEFAULT_WARMUP_TAINT;
    let p = prefetch(
        "default",
        json!({"filter_by_labels": {"app": "nginx"}, "node_filter": "worker"}),
    );
    let mut nodes = walkthrough_nodes();
    nodes.push(node(
        "kind-worker4",
        json!([{"key": key, "effect": "NoSchedule"}]),
        json!([]),
    ));
    let plan = plan_images(&p, no_workloads(), &no_accounts(), &nodes, Some(key));
    let warming: Vec<(&str, bool)> = plan
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t.warming))
        .collect();
    assert_eq!(
        warming,
        [
            ("kind-worker", false),
            ("kind-worker2", false),
            ("kind-worker3", false),
            ("kind-worker4", true)
        ]
    );
    let off = plan_images(&p, no_workloads(), &no_accounts(), &nodes, None);
    assert_eq!(off.targets.len(), 3);
    assert!(matches!(
        &off.skipped.last().unwrap().reason,
        SkipReason::Taint { taint } if taint == &format!("{key}:NoSchedule")
    ));
}

#[test]
fn images_the_full_list_rule_assumes_are_present_without_a_pod() {
    let p = prefetch("default", json!({"filter_by_labels": {"app": "nginx"}}));
    let deployments = [deployment(
        "default",
        "web",
        json!({"app": "nginx"}),
        &["nginx:1.7.9", "redis:7", "envoyproxy/envoy:v1.31.0"],
        &[],
        &[],
    )];
    let nodes = [
        node(
            "full",
            json!([]),
            json!([{"names": ["nginx:1.7.9"], "sizeBytes": 1}]),
        ),
        node("other", json!([]), json!([])),
    ];
    let redis = "docker.io/library/redis:7";
    let plan = plan_images_with(
        &p,
        &deployments,
        &no_accounts(),
        &nodes,
        None,
        |n| Cow::Owned(node_images(n).into_iter().collect()),
        |n, image| n.metadata.name.as_deref() == Some("full") && image == redis,
    );
    let full = &plan.targets[0];
    assert_eq!(full.node, "full");
    assert_eq!(full.pull, ["docker.io/envoyproxy/envoy:v1.31.0"]);
    assert_eq!(full.present, ["docker.io/library/nginx:1.7.9", redis]);
    assert_eq!(full.assumed, [redis]);
    let other = &plan.targets[1];
    assert_eq!(other.pull.len(), 3);
    assert!(other.assumed.is_empty());
}

#[test]
fn disk_pressure_nodes_are_skipped_with_that_reason() {
    let p = prefetch("default", json!({"filter_by_labels": {"app": "nginx"}}));
    let pressed = crate::eligibility::under_disk_pressure(node("pressed", json!([]), json!([])));
    let mut not_ready = node("not-ready", json!([]), json!([]));
    not_ready.status.as_mut().unwrap().conditions = None;
    let plan = plan_images(
        &p,
        no_workloads(),
        &no_accounts(),
        &[
            pressed.clone(),
            not_ready,
            node("fine", json!([]), json!([])),
        ],
        None,
    );
    assert_eq!(plan.skipped_by_reason(), "NotReady: 1, DiskPressure: 1");
    let plan = plan_images(
        &p,
        no_workloads(),
        &no_accounts(),
        &[pressed, node("fine", json!([]), json!([]))],
        None,
    );
    assert_eq!(plan.targets.len(), 1);
    assert_eq!(plan.skipped_by_reason(), "DiskPressure: 1");
    assert_eq!(
        plan.skipped,
        [Skipped {
            node: "pressed".into(),
            reason: SkipReason::DiskPressure
        }]
    );
}

#[test]
fn node_images_are_normalized() {
    let n = node(
        "n",
        json!([]),
        json!([{"names": ["nginx:1.7.9", "quay.io/x/y@sha256:0123456789abcdef0123456789abcdef", "Not A Ref"]}]),
    );
    let got: Vec<String> = node_images(&n).into_iter().collect();
    assert_eq!(
        got,
        [
            "docker.io/library/nginx:1.7.9",
            "quay.io/x/y@sha256:0123456789abcdef0123456789abcdef"
        ]
    );
}
