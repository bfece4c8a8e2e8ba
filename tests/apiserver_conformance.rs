//! The test API server against the semantics our code relies on. These run against the real
//! kube-apiserver too (PREFETCH_E2E_KUBECONFIG, with the Prefetch CRD installed), which is how
//! the test double is kept honest.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_tests::apiserver::{Fault, TestApiServer};
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::prefetch;
use serde_json::json;

fn lease(name: &str, labels: serde_json::Value) -> Lease {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap()
}

async fn merge(leases: &Api<Lease>, name: &str, patch: serde_json::Value) -> Lease {
    leases
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap()
}

fn api_code(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_conflicts_and_not_found() {
    let c = TestCluster::start("crud").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    let created = leases
        .create(&PostParams::default(), &lease("a", json!({})))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_code(
            leases
                .create(&PostParams::default(), &lease("a", json!({})))
                .await
                .unwrap_err()
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_code(leases.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );

    // A write based on a stale resourceVersion conflicts.
    let mut first = leases.get("a").await.unwrap();
    let mut second = first.clone();
    first.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("a", &PostParams::default(), &first)
        .await
        .unwrap();
    second.spec.as_mut().unwrap().holder_identity = Some("c".into());
    assert_eq!(
        api_code(
            leases
                .replace("a", &PostParams::default(), &second)
                .await
                .unwrap_err()
        )
        .0,
        409
    );

    // A no-op patch keeps the resourceVersion (and so triggers no watch event).
    let before = leases.get("a").await.unwrap().resource_version();
    let same = Patch::Merge(json!({"spec": {"holderIdentity": "b"}}));
    let after = leases
        .patch("a", &PatchParams::default(), &same)
        .await
        .unwrap()
        .resource_version();
    assert_eq!(before, after);

    // Objects go into existing namespaces only.
    let elsewhere: Api<Lease> = Api::namespaced(c.client.clone(), "no-such-namespace");
    assert_eq!(
        api_code(
            elsewhere
                .create(&PostParams::default(), &lease("x", json!({})))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_select_and_paginate() {
    let c = TestCluster::start("list").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    for i in 0..5 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        leases
            .create(
                &PostParams::default(),
                &lease(&format!("l{i}"), json!({"tier": tier})),
            )
            .await
            .unwrap();
    }
    let even = leases
        .list(&ListParams::default().labels("tier=even"))
        .await
        .unwrap();
    assert_eq!(
        even.items.iter().map(|l| l.name_any()).collect::<Vec<_>>(),
        ["l0", "l2", "l4"]
    );
    let set = leases
        .list(&ListParams::default().labels("tier in (odd),tier!=even"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 2);

    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = leases.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|l| l.name_any()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["l0", "l1", "l2", "l3", "l4"]);
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_from_a_version_and_follow_selectors() {
    let c = TestCluster::start("watch").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    leases
        .create(
            &PostParams::default(),
            &lease("before", json!({"w": "yes"})),
        )
        .await
        .unwrap();
    let rv = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = leases
        .watch(&WatchParams::default().labels("w=yes").timeout(20), &rv)
        .await
        .unwrap()
        .boxed();

    leases
        .create(&PostParams::default(), &lease("w", json!({"w": "yes"})))
        .await
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("other", json!({"w": "no"})))
        .await
        .unwrap();
    merge(&leases, "w", json!({"spec": {"holderIdentity": "z"}})).await;
    // Leaving the selector is a DELETED for this watch; entering it an ADDED.
    merge(&leases, "w", json!({"metadata": {"labels": {"w": "no"}}})).await;
    merge(
        &leases,
        "other",
        json!({"metadata": {"labels": {"w": "yes"}}}),
    )
    .await;
    leases.delete("other", &Default::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Added(l) => seen.push(format!("ADDED {}", l.name_any())),
            WatchEvent::Modified(l) => seen.push(format!("MODIFIED {}", l.name_any())),
            WatchEvent::Deleted(l) => seen.push(format!("DELETED {}", l.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "ADDED w",
            "MODIFIED w",
            "DELETED w",
            "ADDED other",
            "DELETED other"
        ]
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_and_generation() {
    let c = TestCluster::start("status").await.unwrap();
    let prefetches: Api<Prefetch> = Api::namespaced(c.client.clone(), &c.namespace);
    let object: Prefetch = serde_json::from_value(prefetch(
        &c.namespace,
        "p",
        json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 60}),
    ))
    .unwrap();
    let created = prefetches
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // The status subresource ignores spec; the main resource ignores status.
    let status_patch = Patch::Merge(
        json!({"spec": {"retry_after": 999}, "status": {"phase": "RUNNING", "total": 3}}),
    );
    let after = prefetches
        .patch_status("p", &PatchParams::default(), &status_patch)
        .await
        .unwrap();
    assert_eq!(after.spec.retry_after, Some(60));
    assert_eq!(after.status.as_ref().unwrap().total, 3);
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let main_patch = Patch::Merge(json!({"spec": {"retry_after": 120}, "status": {"total": 99}}));
    let after = prefetches
        .patch("p", &PatchParams::default(), &main_patch)
        .await
        .unwrap();
    assert_eq!(after.spec.retry_after, Some(120));
    assert_eq!(after.status.as_ref().unwrap().total, 3);
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "spec changes bump generation"
    );
    let labels = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    assert_eq!(
        prefetches
            .patch("p", &PatchParams::default(), &labels)
            .await
            .unwrap()
            .metadata
            .generation,
        Some(2)
    );
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_collects_its_dependents() {
    let c = TestCluster::start("gc").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    let owner = leases
        .create(&PostParams::default(), &lease("owner", json!({})))
        .await
        .unwrap();
    let mut dependent = lease("dependent", json!({}));
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "coordination.k8s.io/v1".into(),
            kind: "Lease".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    leases
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("bystander", json!({})))
        .await
        .unwrap();
    leases.delete("owner", &Default::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while leases.get_opt("dependent").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dependent never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leases.get_opt("bystander").await.unwrap().is_some());
    c.cleanup().await;
}

/// Only the test double can be made to forget history or fail on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_versions_and_injected_faults() {
    let api = TestApiServer::start().await.unwrap();
    prefetch_tests::tls_client::install_crypto_provider();
    let dir = prefetch_tests::fixtures::TempDir::new("conformance-faults").unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let client = prefetch_tests::cluster::client_for(&path).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client, "default");
    leases
        .create(&PostParams::default(), &lease("a", json!({})))
        .await
        .unwrap();
    let rv = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    leases
        .create(&PostParams::default(), &lease("b", json!({})))
        .await
        .unwrap();
    api.compact();
    let mut stream = leases
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Expired, got {other:?}"),
    }

    api.inject(
        Fault {
            verb: Some("get"),
            resource: Some("leases"),
            client: None,
            code: 500,
        },
        1,
    );
    assert_eq!(api_code(leases.get("a").await.unwrap_err()).0, 500);
    assert!(leases.get("a").await.is_ok(), "the fault fires once");
    let counts = api.request_counts();
    let gets = counts
        .iter()
        .filter(|(k, _)| k.verb == "get" && k.resource == "leases")
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert_eq!(gets, 2);

    // 404 and 403 with the bodies kube-apiserver sends (a CRD not installed; RBAC).
    for code in [404, 403] {
        api.inject(
            Fault {
                verb: Some("list"),
                resource: Some("leases"),
                client: None,
                code,
            },
            1,
        );
        let (got, reason) = api_code(leases.list(&ListParams::default()).await.unwrap_err());
        assert_eq!(
            (got, reason.as_str()),
            (code, if code == 404 { "NotFound" } else { "Forbidden" })
        );
    }

    // An outage: the watch ends, connections are refused, and the same address serves again
    // afterwards with the store intact.
    let mut watch = leases
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    while let Ok(Ok(Some(_))) =
        tokio::time::timeout(Duration::from_millis(200), watch.try_next()).await
    {}
    api.go_down().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = watch.try_next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the open watch ends with the outage");
    match leases.get("a").await {
        Err(kube::Error::Api(status)) => panic!("answered during the outage: {status:?}"),
        Err(_) => {}
        Ok(_) => panic!("served during the outage"),
    }
    api.come_back().await.unwrap();
    assert_eq!(leases.get("a").await.unwrap().name_any(), "a");
}

/// A JSON patch guarded by `test` ops (how the controller lifts the warmup taint): applied
/// while the object is as read; 422 Invalid and no change once it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_tests_guard_the_patch() {
    let c = TestCluster::start("jsonpatch").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    let read = leases
        .create(&PostParams::default(), &lease("a", json!({"x": "1"})))
        .await
        .unwrap();
    let guarded = |rv: &str| -> json_patch::Patch {
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "remove", "path": "/metadata/labels/x"}
        ]))
        .unwrap()
    };
    let stale = read.resource_version().unwrap();
    // Someone else writes first.
    merge(&leases, "a", json!({"spec": {"holderIdentity": "b"}})).await;
    let err = leases
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded(&stale)),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        }
        other => panic!("expected 422, got {other}"),
    }
    let now = leases.get("a").await.unwrap();
    assert_eq!(
        now.labels().get("x").map(String::as_str),
        Some("1"),
        "nothing applied"
    );
    // From the fresh object, the same patch applies.
    let fresh = now.resource_version().unwrap();
    let patched = leases
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded(&fresh)),
        )
        .await
        .unwrap();
    assert!(patched.labels().get("x").is_none());
    assert_ne!(patched.resource_version().unwrap(), fresh);
    // A path that is not there does not apply either.
    let missing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/labels/x"}])).unwrap();
    let err = leases
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(missing))
        .await
        .unwrap_err();
    assert_eq!(api_code(err), (422, "Invalid".into()));
    c.cleanup().await;
}

/// Node taints are validated as the real API server does, so no test can create a node a real
/// cluster would refuse. (Not run against a real cluster: it would create Nodes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_taints_are_validated() {
    let c = TestCluster::start("taints").await.unwrap();
    if c.is_real() {
        eprintln!("skipped against a real cluster: this test creates Nodes");
        c.cleanup().await;
        return;
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let node = |name: &str, taints: serde_json::Value| {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"taints": taints}}))
            .unwrap()
    };
    let ok = node(
        "ok",
        json!([{"key": "cache.techsquad.rocks/warming", "effect": "NoSchedule"},
               {"key": "cache.techsquad.rocks/warming", "effect": "NoExecute"},
               {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    );
    nodes.create(&PostParams::default(), &ok).await.unwrap();
    for (taints, field) in [
        (
            json!([{"key": "a", "effect": "Sometimes"}]),
            "spec.taints[0].effect",
        ),
        (
            json!([{"key": "not a key", "effect": "NoSchedule"}]),
            "spec.taints[0].key",
        ),
        (
            json!([{"key": "a", "effect": "NoSchedule"}, {"key": "a", "value": "v", "effect": "NoSchedule"}]),
            "spec.taints[1]",
        ),
    ] {
        let err = nodes
            .create(&PostParams::default(), &node("bad", taints.clone()))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{taints}");
                assert!(s.message.contains(field), "{taints}: {}", s.message);
            }
            other => panic!("{taints}: {other}"),
        }
    }
    // Updates too: a duplicate cannot be patched in.
    let dup = Patch::Merge(
        json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}, {"key": "x", "effect": "NoSchedule"}]}}),
    );
    let err = nodes
        .patch("ok", &PatchParams::default(), &dup)
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 422);
}

/// Pod scheduling gates as kube-apiserver validates them (`ValidatePodUpdate`): a gate may
/// only be removed; adding one, or changing other spec fields, is 422 Invalid; a pod created
/// bound may not carry gates. Our controller's release patch (test + remove) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_gates_may_only_shrink() {
    use k8s_openapi::api::core::v1::Pod;
    let c = TestCluster::start("gates").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), &c.namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "gated"},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
                 "schedulingGates": [{"name": "example.com/a"}, {"name": "cache.techsquad.rocks/prefetch"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let json_patch =
        |ops: serde_json::Value| Patch::<()>::Json(serde_json::from_value(ops).unwrap());
    let add = json_patch(
        json!([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "example.com/b"}}]),
    );
    let err = pods
        .patch("gated", &PatchParams::default(), &add)
        .await
        .unwrap_err();
    assert_eq!(api_code(err), (422, "Invalid".into()));
    let other = json_patch(json!([{"op": "add", "path": "/spec/restartPolicy", "value": "Never"}]));
    let err = pods
        .patch("gated", &PatchParams::default(), &other)
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 422);
    // The controller's own release: removes only its gate.
    let release = prefetch_controller::core::gate::release_patch(&created).unwrap();
    let released = pods
        .patch(
            "gated",
            &PatchParams::default(),
            &Patch::<()>::Json(release.clone()),
        )
        .await
        .unwrap();
    let names: Vec<String> = released
        .spec
        .unwrap()
        .scheduling_gates
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["example.com/a"]);
    // The same patch again: its test no longer holds.
    let err = pods
        .patch(
            "gated",
            &PatchParams::default(),
            &Patch::<()>::Json(release),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 422);
    let bound: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bound"},
        "spec": {"nodeName": "somewhere", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
                 "schedulingGates": [{"name": "example.com/a"}]}
    }))
    .unwrap();
    let err = pods
        .create(&PostParams::default(), &bound)
        .await
        .unwrap_err();
    assert_eq!(api_code(err), (422, "Invalid".into()));
    if let Some(api) = &c.api {
        // A gated pod is never bound (the scheduler's binding fails too).
        assert!(api.bind(&c.namespace, "gated", "node-1").is_err());
    }
    c.cleanup().await;
}

/// Merge patch (RFC 7386) and server-side apply of a Prefetch's status, as kube-apiserver
/// does them: a merge patch keeps what it does not mention and removes what it sets to null;
/// an apply removes what its manager applied before and leaves out now, keeps another
/// manager's fields, and conflicts (409) over a field another manager set differently unless
/// forced. What the test API server cannot model it refuses: strategic merge patch, and apply
/// anywhere but a custom resource's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_patch_and_server_side_apply_of_a_status() {
    let c = TestCluster::start("ssa").await.unwrap();
    let prefetches: Api<Prefetch> = Api::namespaced(c.client.clone(), &c.namespace);
    let object: Prefetch = serde_json::from_value(prefetch(
        &c.namespace,
        "p",
        json!({"filter_by_labels": {"app": "nginx"}}),
    ))
    .unwrap();
    prefetches
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let status_of = |p: Prefetch| serde_json::to_value(p.status.unwrap()).unwrap();
    let apply = |status: serde_json::Value| {
        Patch::Apply(
            json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
                            "metadata": {"name": "p"}, "status": status}),
        )
    };
    let by = |manager: &str| PatchParams {
        field_manager: Some(manager.into()),
        ..PatchParams::default()
    };

    // Merge patch: unmentioned members stay, null removes.
    let rollout = json!({"deployment": "web", "images": ["a"],
                         "requested_at": "2026-12-06T04:00:00.100000Z",
                         "prefetched_at": "2026-12-06T04:00:09.000000Z"});
    prefetches
        .patch_status("p", &by("merger"), &Patch::Merge(json!({"status": {
            "phase": "RUNNING", "digests": {"a": "sha256:a", "b": "sha256:b"}, "last_rollout": rollout}})))
        .await
        .unwrap();
    let kept = prefetches
        .patch_status("p", &by("merger"), &Patch::Merge(json!({"status": {
            "digests": {"a": "sha256:a"}, "last_rollout": {"requested_at": "2026-12-06T04:00:00.900000Z"}}})))
        .await
        .unwrap();
    let kept = status_of(kept);
    assert_eq!(
        kept["digests"]["b"], "sha256:b",
        "a merge patch keeps a key it omits"
    );
    assert_eq!(
        kept["last_rollout"]["prefetched_at"], "2026-12-06T04:00:09.000000Z",
        "a merge patch keeps an omitted field"
    );
    let removed = prefetches
        .patch_status(
            "p",
            &by("merger"),
            &Patch::Merge(json!({"status": {
            "digests": {"b": null}, "last_rollout": {"prefetched_at": null}}})),
        )
        .await
        .unwrap();
    let removed = status_of(removed);
    assert_eq!(removed["digests"], json!({"a": "sha256:a"}));
    assert!(removed["last_rollout"].get("prefetched_at").is_none());

    // Apply: the merger's fields conflict unless forced; forced, they become the applier's.
    let controller = PatchParams::apply("ctl");
    let err = prefetches
        .patch_status(
            "p",
            &controller,
            &apply(json!({"phase": "SUCCEEDED", "ready": 3})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), (409, "Conflict".into()));
    let forced = PatchParams::apply("ctl").force();
    let applied = prefetches
        .patch_status(
            "p",
            &forced,
            &apply(json!({"phase": "SUCCEEDED", "ready": 3, "digests": {"c": "sha256:c"}})),
        )
        .await
        .unwrap();
    let applied = status_of(applied);
    assert_eq!(
        (&applied["phase"], &applied["ready"]),
        (&json!("SUCCEEDED"), &json!(3))
    );
    assert_eq!(
        applied["digests"],
        json!({"a": "sha256:a", "c": "sha256:c"}),
        "the merger's digest is still the merger's"
    );
    assert!(
        applied.get("last_rollout").is_some(),
        "another manager's field stays"
    );
    // Left out now: ready and digest c go (only ctl owned them); phase too, as forcing took
    // it over; the merger's fields stay.
    let reapplied = prefetches
        .patch_status("p", &forced, &apply(json!({"total": 6})))
        .await
        .unwrap();
    let reapplied = status_of(reapplied);
    assert_eq!(
        reapplied.get("ready").and_then(|v| v.as_i64()).unwrap_or(0),
        0
    );
    assert_eq!(reapplied["total"], 6);
    assert_eq!(reapplied["digests"], json!({"a": "sha256:a"}));
    assert!(reapplied.get("last_rollout").is_some());
    // Apply needs a field manager: kube-apiserver answers 422 (PatchOptions fieldManager:
    // Required value).
    let nameless = prefetches
        .patch_status("p", &PatchParams::default(), &apply(json!({"total": 1})))
        .await
        .unwrap_err();
    assert_eq!(api_code(nameless), (422, "Invalid".into()));

    if c.api.is_some() {
        let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
        leases
            .create(&PostParams::default(), &lease("l", json!({})))
            .await
            .unwrap();
        let strategic = leases
            .patch(
                "l",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"holderIdentity": "b"}})),
            )
            .await
            .unwrap_err();
        assert_eq!(api_code(strategic).0, 415, "refused, not approximated");
        let applied_lease = leases
            .patch("l", &PatchParams::apply("x"), &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}})))
            .await
            .unwrap_err();
        assert_eq!(api_code(applied_lease).0, 415, "refused, not approximated");
    }
    c.cleanup().await;
}

/// Server-side apply of a Namespace's label, as the controller keeps the gated-rollouts label
/// (`controller/core/src/gated_namespaces.rs`): the label applied, then removed by an apply
/// that leaves it out; labels of other managers kept; a uid in the apply configuration makes
/// the apply of a namespace that does not exist a 409, never a create; and every namespace
/// carries `kubernetes.io/metadata.name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_of_a_namespace_label() {
    use k8s_openapi::api::core::v1::Namespace;
    let c = TestCluster::start("ns-apply").await.unwrap();
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let name = format!("{}-labelled", c.namespace);
    let created = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"team": "a", "gated": "true"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels(&created)["kubernetes.io/metadata.name"], name);
    let ours = "example.com/ours";
    let apply = |with: bool, uid: &str| {
        let mut metadata = json!({"name": name, "uid": uid});
        if with {
            metadata["labels"] = json!({ours: "true"});
        }
        Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}))
    };
    let ctl = PatchParams::apply("ctl").force();
    let labelled = namespaces
        .patch(&name, &ctl, &apply(true, &uid))
        .await
        .unwrap();
    assert_eq!(labels(&labelled)[ours], "true");
    assert_eq!(
        labels(&labelled)["team"],
        "a",
        "another manager's label stays"
    );
    let unlabelled = namespaces
        .patch(&name, &PatchParams::apply("ctl"), &apply(false, &uid))
        .await
        .unwrap();
    assert!(!labels(&unlabelled).contains_key(ours), "left out: removed");
    assert_eq!(labels(&unlabelled)["team"], "a");
    assert_eq!(labels(&unlabelled)["kubernetes.io/metadata.name"], name);
    // A label a manager never applied is not its to remove: an apply without it leaves it.
    let kept = namespaces
        .patch(&name, &PatchParams::apply("other"), &apply(false, &uid))
        .await
        .unwrap();
    assert_eq!(labels(&kept)["gated"], "true");
    // A uid that names no object: 409, and nothing created.
    let gone = format!("{}-gone", c.namespace);
    let body = Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": gone, "uid": "00000000-0000-4000-8000-00000000dead", "labels": {ours: "true"}}}));
    let err = namespaces.patch(&gone, &ctl, &body).await.unwrap_err();
    assert_eq!(api_code(err), (409, "Conflict".into()));
    assert!(namespaces.get_opt(&gone).await.unwrap().is_none());
    // Another object's uid: refused too, and the label not written.
    let wrong = namespaces
        .patch(
            &name,
            &ctl,
            &apply(true, "00000000-0000-4000-8000-00000000beef"),
        )
        .await;
    assert!(wrong.is_err(), "{wrong:?}");
    let now = namespaces.get(&name).await.unwrap();
    assert!(!labels(&now).contains_key(ours));
    if c.is_real() {
        let _ = namespaces.delete(&name, &Default::default()).await;
    }
    c.cleanup().await;
}
