//! The controller's status writes against the API server (design:
//! docs/src/design.md#status-ownership): for any sequence of statuses the controller writes, the
//! object's status after each write is exactly the status just written: no field of an earlier
//! write survives (a merge patch would keep `last_rollout.prefetched_at`, a digest or the sources
//! of an image no longer wanted, any optional field), and fields another field manager wrote in
//! between are removed too. Runs on the test API server, or on the real cluster named by
//! `PREFETCH_E2E_KUBECONFIG` (with the CRD installed).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use prefetch_common::{
    ColdStart, ImagePullStatus, Phase, Prefetch, PrefetchStatus, PullFailure, RolloutRecord,
    StartsStatus, WaitingPull,
};
use prefetch_controller::shell::reconciler::write_status;
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::sample_prefetch;
use proptest::prelude::*;
use serde_json::{Value, json};

const NAME: &str = "prefetch-sample";

fn whole_second() -> impl Strategy<Value = Time> {
    (1_700_000_000i64..1_800_000_000).prop_map(|s| Time(jiff::Timestamp::from_second(s).unwrap()))
}

fn microsecond() -> impl Strategy<Value = MicroTime> {
    (1_700_000_000_000_000i64..1_800_000_000_000_000)
        .prop_map(|us| MicroTime(jiff::Timestamp::from_microsecond(us).unwrap()))
}

fn images() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("img-[a-c]", 0..3).prop_map(|s| s.into_iter().collect())
}

fn rollout() -> impl Strategy<Value = RolloutRecord> {
    (
        "web|api|",
        prop::option::of("(Deployment|StatefulSet|CronJob)/(web|api)"),
        images(),
        microsecond(),
        microsecond(),
        prop::option::of(microsecond()),
    )
        .prop_map(
            |(deployment, workload, images, requested, observed, prefetched)| RolloutRecord {
                deployment,
                workload,
                images,
                requested_at: Some(requested),
                observed_at: Some(observed),
                prefetched_at: prefetched,
            },
        )
}

fn status() -> impl Strategy<Value = PrefetchStatus> {
    let phase = prop_oneof![
        Just(Phase::Pending),
        Just(Phase::Running),
        Just(Phase::Succeeded),
        Just(Phase::Failed)
    ];
    let failure = ("node-[1-2]", "img-[a-c]").prop_map(|(node, image)| PullFailure {
        node,
        image,
        reason: "ErrImagePull".into(),
        message: String::new(),
    });
    let waiting =
        ("node-[1-2]", "img-[a-c]", "RegistryBudget|ZoneSeed").prop_map(|(node, image, reason)| {
            WaitingPull {
                node,
                image,
                reason,
                message: String::new(),
            }
        });
    let counts = (0i64..6, 0i64..6, 0i64..6);
    let digests = prop::collection::btree_map("img-[a-c]", "sha256:[0-9a-f]{4}", 0..3);
    let sources = prop::collection::btree_map(
        "img-[a-c]",
        prop::collection::btree_set("Deployment/[a-c]|CronJob/[a-c]|declared", 1..3)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        0..3,
    );
    let times = (
        prop::option::of(whole_second()),
        prop::option::of(whole_second()),
        prop::option::of(whole_second()),
    );
    let condition = (whole_second(), "True|False").prop_map(|(at, status)| Condition {
        type_: "Ready".into(),
        status,
        reason: "Round".into(),
        message: String::new(),
        last_transition_time: at,
        observed_generation: None,
    });
    (
        (phase, prop::option::of(1i64..5), images(), images(), counts),
        (
            prop::collection::vec(failure, 0..3),
            digests,
            times,
            prop::option::of(rollout()),
            prop::collection::vec(condition, 0..2),
        ),
        (
            sources,
            prop::option::of(microsecond()),
            starts(),
            pulls(),
            prop::collection::vec(waiting, 0..3),
        ),
    )
        .prop_map(
            |(
                (phase, observed_generation, images, nodes, (total, ready, failed)),
                (failures, digests, (start, end, next), last_rollout, conditions),
                (sources, prefetched_through, starts, pulls, waiting),
            )| PrefetchStatus {
                phase,
                observed_generation,
                images,
                sources,
                nodes,
                total,
                ready,
                failed,
                failures,
                digests,
                last_round_start: start,
                last_round_end: end,
                next_round: next,
                last_rollout,
                prefetched_through,
                conditions,
                starts,
                pulls,
                waiting,
            },
        )
}

/// Seconds as the status holds them: whole milliseconds, some with a fraction a float cannot
/// hold exactly (0.1), so a write that changed a number would show.
fn seconds() -> impl Strategy<Value = f64> {
    (0u32..100_000).prop_map(|ms| f64::from(ms) / 1000.0)
}

fn starts() -> impl Strategy<Value = Option<StartsStatus>> {
    let cold = (
        "web-[a-c]",
        "node-[1-2]",
        "img-[a-c]",
        seconds(),
        prop::option::of(whole_second()),
    )
        .prop_map(|(pod, node, image, seconds, at)| ColdStart {
            pod,
            node,
            image,
            seconds,
            at,
        });
    let starts = (
        0i64..1000,
        0i64..1000,
        prop::option::of(0i64..=100),
        prop::option::of(cold),
        prop::option::of(whole_second()),
    )
        .prop_map(|(warm, cold, percent, last_cold, through)| StartsStatus {
            warm,
            cold,
            warm_percent_last_hour: percent,
            last_cold,
            counted_through: through,
        });
    prop::option::of(starts)
}

fn pulls() -> impl Strategy<Value = BTreeMap<String, ImagePullStatus>> {
    let figures = (0i64..1 << 40, seconds(), seconds(), 1i64..50).prop_map(
        |(size_bytes, median_seconds, slowest_seconds, nodes)| ImagePullStatus {
            size_bytes,
            median_seconds,
            slowest_seconds,
            nodes,
        },
    );
    prop::collection::btree_map("img-[a-c]", figures, 0..3)
}

/// Another writer of the status: a person's `kubectl edit --subresource=status`.
async fn edit_by_hand(client: &Client, ns: &str) {
    let api: Api<Prefetch> = Api::namespaced(client.clone(), ns);
    let edit = json!({"status": {"phase": "FAILED", "digests": {"img-z": "sha256:edited"},
                                 "sources": {"img-z": ["Deployment/edited"]},
                                 "last_round_end": "2026-01-01T00:00:00Z"}});
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    api.patch_status(NAME, &params, &Patch::Merge(edit))
        .await
        .expect("the hand edit is accepted");
}

async fn server_status(client: &Client, ns: &str) -> Value {
    let resource = ApiResource::erase::<Prefetch>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object = api.get(NAME).await.expect("the Prefetch");
    object.data.get("status").cloned().unwrap_or(Value::Null)
}

#[test]
fn the_server_holds_exactly_the_status_last_written() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime
        .block_on(TestCluster::start("status-writes"))
        .unwrap();
    let (client, ns) = (cluster.client.clone(), cluster.namespace.clone());
    let api: Api<Prefetch> = Api::namespaced(client.clone(), &ns);
    runtime
        .block_on(api.create(
            &PostParams::default(),
            &serde_json::from_value(sample_prefetch(&ns)).unwrap(),
        ))
        .unwrap();
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(writes in prop::collection::vec((status(), any::<bool>()), 1..6))| {
        for (written, edited_before) in writes {
            runtime.block_on(async {
                if edited_before {
                    edit_by_hand(&client, &ns).await;
                }
                write_status(&api, NAME, &written).await.expect("status written");
                let on_server = server_status(&client, &ns).await;
                let expected = serde_json::to_value(&written).unwrap();
                assert_eq!(on_server, expected, "the server holds more or less than written");
            });
        }
    });
    // The write the controller makes after a failed pull and its retry, one at a time: the
    // failures, the dropped image's digest and the earlier rollout's prefetched_at all go.
    let mut first = PrefetchStatus {
        phase: Phase::Failed,
        images: vec!["img-a".into(), "img-b".into()],
        failures: vec![PullFailure {
            node: "node-1".into(),
            image: "img-b".into(),
            reason: "ErrImagePull".into(),
            message: "pull failed".into(),
        }],
        digests: BTreeMap::from([
            ("img-a".into(), "sha256:aa".into()),
            ("img-b".into(), "sha256:bb".into()),
        ]),
        sources: BTreeMap::from([
            ("img-a".into(), vec!["Deployment/web".into()]),
            (
                "img-b".into(),
                vec!["CronJob/report".into(), "declared".into()],
            ),
        ]),
        ..PrefetchStatus::default()
    };
    first.last_rollout = Some(RolloutRecord {
        deployment: "web".into(),
        workload: Some("Deployment/web".into()),
        images: vec!["img-b".into()],
        requested_at: Some(MicroTime("2026-12-06T04:00:00.100000Z".parse().unwrap())),
        observed_at: Some(MicroTime("2026-12-06T04:00:00.200000Z".parse().unwrap())),
        prefetched_at: Some(MicroTime("2026-12-06T04:00:09Z".parse().unwrap())),
    });
    let mut second = first.clone();
    second.phase = Phase::Succeeded;
    second.images = vec!["img-a".into()];
    second.failures.clear();
    second.digests.remove("img-b");
    second.sources.remove("img-b");
    if let Some(record) = second.last_rollout.as_mut() {
        record.requested_at = Some(MicroTime("2026-12-06T04:00:00.900000Z".parse().unwrap()));
        record.prefetched_at = None;
    }
    runtime.block_on(async {
        write_status(&api, NAME, &first).await.unwrap();
        write_status(&api, NAME, &second).await.unwrap();
        let on_server = server_status(&client, &ns).await;
        assert_eq!(on_server["failures"], json!([]));
        assert_eq!(on_server["digests"], json!({"img-a": "sha256:aa"}));
        assert_eq!(on_server["sources"], json!({"img-a": ["Deployment/web"]}));
        assert_eq!(on_server["last_rollout"].get("prefetched_at"), None);
        assert_eq!(on_server, serde_json::to_value(&second).unwrap());
        if let Some(api) = cluster.api.as_ref() {
            let managed =
                api.managed_fields("cache.techsquad.rocks", "v1", "prefetches", &ns, NAME);
            let appliers: Vec<(&str, &str)> = managed
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["operation"] == "Apply")
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap(),
                        e["subresource"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            assert_eq!(appliers, [("prefetch-controller", "status")], "{managed:#}");
        }
        cluster.cleanup().await;
    });
}
