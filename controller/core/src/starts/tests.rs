//! Tests of `starts`, beside it so that the decisions read on their own.

use super::*;

/// The caches of one namespace: names per kind, and ReplicaSets' and Jobs' owners.
#[derive(Default)]
struct Caches {
    names: Vec<(PodOwnerKind, String)>,
    owners: Vec<(PodOwnerKind, String, String)>,
}

impl Caches {
    fn with(mut self, kind: PodOwnerKind, name: &str) -> Self {
        self.names.push((kind, name.to_string()));
        self
    }

    fn owned(mut self, kind: PodOwnerKind, name: &str, owner: &str) -> Self {
        self.owners
            .push((kind, name.to_string(), owner.to_string()));
        self.with(kind, name)
    }
}

impl OwnerCaches for Caches {
    fn holds(&self, kind: PodOwnerKind, name: &str) -> bool {
        self.names.iter().any(|(k, n)| *k == kind && n == name)
    }

    fn names_starting_with(&self, kind: PodOwnerKind, prefix: &str) -> Vec<String> {
        self.names
            .iter()
            .filter(|(k, n)| *k == kind && n.starts_with(prefix))
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn owner_of(&self, kind: PodOwnerKind, name: &str) -> Option<String> {
        self.owners
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
            .map(|(_, _, o)| o.clone())
    }
}

fn workload(kind: WorkloadKind, name: &str) -> Option<WorkloadRef> {
    Some(WorkloadRef {
        kind,
        name: name.to_string(),
    })
}

use PodOwnerKind::{DaemonSet, Job, ReplicaSet, StatefulSet};

#[test]
fn each_kind_is_found_from_its_pods_name() {
    let caches = Caches::default()
        .owned(ReplicaSet, "web-7d9f8c6b5", "web")
        .with(StatefulSet, "db")
        .with(DaemonSet, "agent")
        .owned(Job, "report-29412345", "report")
        .with(Job, "migrate");
    for (pod, want) in [
        (
            "web-7d9f8c6b5-x2k4q",
            workload(WorkloadKind::Deployment, "web"),
        ),
        ("db-0", workload(WorkloadKind::StatefulSet, "db")),
        ("db-12", workload(WorkloadKind::StatefulSet, "db")),
        ("agent-7hq2z", workload(WorkloadKind::DaemonSet, "agent")),
        (
            "report-29412345-b8tzc",
            workload(WorkloadKind::CronJob, "report"),
        ),
        ("migrate-5kq7n", workload(WorkloadKind::Job, "migrate")),
    ] {
        assert_eq!(workload_of_pod(pod, &caches), want, "{pod}");
    }
}

#[test]
fn pods_of_no_cached_owner_are_not_attributed() {
    let caches = Caches::default()
        .with(ReplicaSet, "orphan-7d9f8c6b5")
        .with(StatefulSet, "db");
    for pod in [
        "orphan-7d9f8c6b5-x2k4q", // a ReplicaSet without a Deployment
        "web-7d9f8c6b5-x2k4q",    // nothing cached
        "db-x",                   // not an ordinal
        "db",
        "",
        "abcd",
        "db-0x",
    ] {
        assert_eq!(workload_of_pod(pod, &caches), None, "{pod}");
    }
}

#[test]
fn a_name_that_leads_to_two_workloads_is_not_attributed() {
    // "api-24567" is StatefulSet api's pod 24567, or DaemonSet api's pod with suffix 24567.
    let caches = Caches::default()
        .with(StatefulSet, "api")
        .with(DaemonSet, "api");
    assert_eq!(workload_of_pod("api-24567", &caches), None);
    let only_daemon_set = Caches::default().with(DaemonSet, "api");
    assert_eq!(
        workload_of_pod("api-24567", &only_daemon_set),
        workload(WorkloadKind::DaemonSet, "api")
    );
}

#[test]
fn owners_with_long_names_are_found_from_the_cut_prefix() {
    // A ReplicaSet name of 62 characters: its pods' generateName is cut to 58 characters.
    let deployment = "a-deployment-with-a-rather-long-name-for-its-team-x";
    let replica_set = format!("{deployment}-5f6c7d8e9b");
    assert_eq!(replica_set.len(), 62);
    let pod = format!("{}{}", &replica_set[..58], "q2x4z");
    let caches = Caches::default()
        .owned(ReplicaSet, &replica_set, deployment)
        .owned(ReplicaSet, &format!("{deployment}-11111"), deployment);
    assert_eq!(
        workload_of_pod(&pod, &caches),
        workload(WorkloadKind::Deployment, deployment)
    );
    // A name of exactly 57 characters ends its 58-character generateName with '-'.
    let exact = "d".repeat(57);
    let caches = Caches::default().with(DaemonSet, &exact);
    assert_eq!(
        workload_of_pod(&format!("{exact}-abcde"), &caches),
        workload(WorkloadKind::DaemonSet, &exact)
    );
}

#[test]
fn the_warm_share_covers_the_last_hour_only() {
    let mut window = HourWindow::default();
    assert_eq!(window.warm_share(10_000), None);
    let now = 1_800_000_000;
    window.record(now - 3_700, false); // more than an hour ago
    window.record(now - 600, true);
    window.record(now - 500, true);
    window.record(now - 400, true);
    window.record(now - 10, false);
    assert_eq!(window.warm_share(now), Some(0.75));
    assert_eq!(
        window.warm_share(now + 3_600),
        None,
        "all forgotten an hour on"
    );
}

#[test]
fn pull_figures_are_across_nodes_and_follow_the_last_pull() {
    let mut pulls = ImagePulls::default();
    assert_eq!((pulls.median(), pulls.slowest()), (None, None));
    let s = Duration::from_secs;
    pulls.record("a", s(4), 1_000);
    assert_eq!((pulls.median(), pulls.slowest()), (Some(s(4)), Some(s(4))));
    pulls.record("b", s(10), 0);
    pulls.record("c", s(6), 1_200);
    assert_eq!(pulls.median(), Some(s(6)));
    assert_eq!(pulls.slowest(), Some(s(10)));
    assert_eq!(pulls.size_bytes, 1_200, "a size of 0 reports nothing");
    pulls.record("d", s(8), 0);
    assert_eq!(pulls.median(), Some(s(6)), "the lower middle of four");
    pulls.record("b", s(2), 0);
    pulls.retain_nodes(&["a", "b", "c"].map(String::from).into());
    assert_eq!(pulls.median(), Some(s(4)));
    assert_eq!(pulls.slowest(), Some(s(6)));
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn warm(image: &str) -> Pulled {
    Pulled::AlreadyPresent {
        image: image.into(),
    }
}

fn cold(image: &str, waited_ms: u64) -> Pulled {
    Pulled::Pulled {
        image: image.into(),
        pull: Duration::from_millis(waited_ms / 2),
        waited: Duration::from_millis(waited_ms),
        size_bytes: 1_000,
    }
}

fn start<'a>(pulled: &'a Pulled, at: &str) -> Start<'a> {
    Start {
        pod: "web-7d9f8c6b5-x2k4q",
        node: "node-a",
        pulled,
        at: ts(at),
    }
}

#[test]
fn starts_are_counted_warm_or_cold_with_the_last_cold_one_named() {
    let mut tally = StartsTally::resumed(None);
    let (w, c) = (warm("nginx:1.28"), cold("nginx:1.28", 12_300));
    assert!(tally.count(&start(&w, "2026-12-07T10:00:00Z")));
    assert!(tally.count(&start(&c, "2026-12-07T10:00:05Z")));
    assert!(
        tally.count(&start(&w, "2026-12-07T10:00:05Z")),
        "same second, new Event"
    );
    let status = tally.status(ts("2026-12-07T10:01:00Z"));
    assert_eq!((status.warm, status.cold), (2, 1));
    assert_eq!(status.warm_percent_last_hour, Some(66));
    let last = status.last_cold.expect("one cold start");
    assert_eq!(
        (
            last.pod.as_str(),
            last.node.as_str(),
            last.image.as_str(),
            last.seconds
        ),
        ("web-7d9f8c6b5-x2k4q", "node-a", "nginx:1.28", 12.3)
    );
    assert_eq!(
        status.counted_through.map(|t| t.0),
        Some(ts("2026-12-07T10:00:05Z"))
    );
    assert_eq!(
        tally
            .status(ts("2026-12-07T11:30:00Z"))
            .warm_percent_last_hour,
        None,
        "no start in the last hour"
    );
}

#[test]
fn a_resumed_tally_skips_what_the_status_counted() {
    let before = StartsStatus {
        warm: 5,
        cold: 1,
        counted_through: Some(Time(ts("2026-12-07T10:00:05Z"))),
        ..StartsStatus::default()
    };
    let mut tally = StartsTally::resumed(Some(&before));
    let w = warm("nginx:1.28");
    assert!(!tally.count(&start(&w, "2026-12-07T10:00:00Z")), "relisted");
    assert!(
        !tally.count(&start(&w, "2026-12-07T10:00:05Z")),
        "that very second"
    );
    assert!(tally.count(&start(&w, "2026-12-07T10:00:06Z")));
    assert!(
        tally.count(&start(&w, "2026-12-07T10:00:06Z")),
        "later ones all count"
    );
    let status = tally.status(ts("2026-12-07T10:01:00Z"));
    assert_eq!((status.warm, status.cold), (7, 1));
    assert_eq!(
        status.warm_percent_last_hour,
        Some(100),
        "the relisted starts are in the hour's share"
    );
    assert_eq!(
        StartsTally::resumed(None).status(ts("2026-12-07T10:00:00Z")),
        StartsStatus::default()
    );
}

#[test]
fn pull_figures_cover_the_prefetchs_pulled_images_only() {
    let mut pulls = BTreeMap::new();
    let mut nginx = ImagePulls::default();
    nginx.record("a", Duration::from_millis(4_000), 70_000_000);
    nginx.record("b", Duration::from_millis(9_500), 70_000_000);
    nginx.record("c", Duration::from_millis(6_000), 0);
    pulls.insert("docker.io/library/nginx:1.28".to_string(), nginx);
    pulls.insert(
        "docker.io/library/redis:8".to_string(),
        ImagePulls::default(),
    );
    let images = [
        "docker.io/library/nginx:1.28".to_string(),
        "docker.io/library/redis:8".to_string(),
        "docker.io/library/busybox:1.36".to_string(),
    ];
    let kept = BTreeMap::from([(
        "docker.io/library/busybox:1.36".to_string(),
        ImagePullStatus {
            size_bytes: 5,
            median_seconds: 1.0,
            slowest_seconds: 2.0,
            nodes: 2,
        },
    )]);
    let figures = pull_figures(&images[..2], &pulls, &kept);
    assert_eq!(
        figures.len(),
        1,
        "redis measured nothing, busybox is not pulled"
    );
    assert_eq!(
        figures["docker.io/library/nginx:1.28"],
        ImagePullStatus {
            size_bytes: 70_000_000,
            median_seconds: 6.0,
            slowest_seconds: 9.5,
            nodes: 3,
        }
    );
    let with_kept = pull_figures(&images, &pulls, &kept);
    assert_eq!(
        with_kept["docker.io/library/busybox:1.36"].nodes, 2,
        "an image not measured here keeps the figures the status had"
    );
    assert_eq!(
        with_kept["docker.io/library/nginx:1.28"].nodes, 3,
        "measured wins"
    );
}
