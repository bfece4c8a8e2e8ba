//! Tests of `starts_book`, beside it so that the bookkeeping reads on its own.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn key(uid: &str) -> PrefetchKey {
    PrefetchKey {
        uid: uid.into(),
        namespace: "demo".into(),
        name: format!("pf-{uid}"),
    }
}

const NGINX: &str = "docker.io/library/nginx:1.28";

fn status_with(starts: StartsStatus) -> PrefetchStatus {
    PrefetchStatus {
        starts: Some(starts),
        ..PrefetchStatus::default()
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
fn an_event_is_read_once_until_forgotten_after_two_hours() {
    let mut book = StartsBook::default();
    let at = ts("2026-12-07T10:00:00Z");
    assert!(book.first_sight("e1", at));
    assert!(!book.first_sight("e1", at), "a relist or a folded repeat");
    book.prune(ts("2026-12-07T11:59:00Z"), &BTreeSet::new());
    assert!(!book.first_sight("e1", at), "still within two hours");
    book.prune(ts("2026-12-07T12:00:01Z"), &BTreeSet::new());
    assert!(
        book.first_sight("e1", at),
        "past the API server's keeping, forgotten"
    );
}

#[test]
fn a_warm_start_saves_the_median_pull_of_its_image() {
    let mut book = StartsBook::default();
    book.record_pull(NGINX.into(), "a", Duration::from_secs(4), 100);
    book.record_pull(NGINX.into(), "b", Duration::from_secs(8), 100);
    book.record_pull(NGINX.into(), "c", Duration::from_secs(6), 100);
    let warm = Pulled::AlreadyPresent {
        image: "nginx:1.28".into(),
    };
    let counted = book.count(
        &key("u1"),
        None,
        &start(&warm, "2026-12-07T10:00:00Z"),
        Some(NGINX),
    );
    assert_eq!(
        counted,
        Some(Counted {
            saved: Some(Duration::from_secs(6))
        })
    );
    let unmeasured = book.count(
        &key("u1"),
        None,
        &start(&warm, "2026-12-07T10:00:01Z"),
        Some("docker.io/library/redis:8"),
    );
    assert_eq!(
        unmeasured,
        Some(Counted { saved: None }),
        "no pull measured, nothing saved"
    );
    let cold = Pulled::Pulled {
        image: "nginx:1.28".into(),
        pull: Duration::from_secs(5),
        waited: Duration::from_secs(5),
        size_bytes: 100,
    };
    let counted = book.count(
        &key("u1"),
        None,
        &start(&cold, "2026-12-07T10:00:02Z"),
        Some(NGINX),
    );
    assert_eq!(
        counted,
        Some(Counted { saved: None }),
        "a cold start saved nothing"
    );
    let status = book
        .status_of(&key("u1"), None, ts("2026-12-07T10:01:00Z"))
        .unwrap();
    assert_eq!((status.warm, status.cold), (2, 1));
    assert_eq!(book.take_changed(), BTreeSet::from([key("u1")]));
    assert!(book.take_changed().is_empty(), "taken");
    assert_eq!(
        book.pull_figures(&[NGINX.to_string()], &BTreeMap::new())[NGINX].nodes,
        3
    );
}

#[test]
fn counts_resume_from_the_status_once() {
    let mut book = StartsBook::default();
    let resumed = status_with(StartsStatus {
        warm: 10,
        counted_through: Some(Time(ts("2026-12-07T10:00:00Z"))),
        ..StartsStatus::default()
    });
    let warm = Pulled::AlreadyPresent {
        image: "nginx:1.28".into(),
    };
    let before = start(&warm, "2026-12-07T09:59:00Z");
    assert_eq!(book.count(&key("u1"), Some(&resumed), &before, None), None);
    assert!(book.take_changed().is_empty(), "nothing changed");
    let after = start(&warm, "2026-12-07T10:00:01Z");
    assert!(
        book.count(&key("u1"), Some(&resumed), &after, None)
            .is_some()
    );
    // Taken over once: a later cached status (this process's own write) does not reset it.
    let later = status_with(StartsStatus {
        warm: 11,
        ..resumed.starts.clone().unwrap()
    });
    let again = start(&warm, "2026-12-07T10:00:02Z");
    assert!(book.count(&key("u1"), Some(&later), &again, None).is_some());
    let now = ts("2026-12-07T10:01:00Z");
    assert_eq!(book.status_of(&key("u1"), None, now).unwrap().warm, 12);
    assert_eq!(book.status_of(&key("u2"), None, now), None, "never counted");
}

#[test]
fn cold_start_events_are_at_most_one_a_minute_per_prefetch() {
    let mut book = StartsBook::default();
    assert!(book.cold_event_due("u1", ts("2026-12-07T10:00:00Z")));
    assert!(!book.cold_event_due("u1", ts("2026-12-07T10:00:59Z")));
    assert!(
        book.cold_event_due("u2", ts("2026-12-07T10:00:59Z")),
        "per Prefetch"
    );
    assert!(book.cold_event_due("u1", ts("2026-12-07T10:01:00Z")));
}

#[test]
fn gone_prefetches_and_nodes_are_forgotten() {
    let mut book = StartsBook::default();
    let warm = Pulled::AlreadyPresent {
        image: "nginx:1.28".into(),
    };
    for uid in ["u1", "u2"] {
        book.count(&key(uid), None, &start(&warm, "2026-12-07T10:00:00Z"), None);
    }
    let gone = book.forget_gone(&BTreeSet::from(["u2".to_string()]));
    assert_eq!(gone, vec![key("u1")]);
    assert_eq!(
        book.take_changed(),
        BTreeSet::from([key("u2")]),
        "no round for a gone one"
    );
    assert_eq!(
        book.status_of(&key("u1"), None, ts("2026-12-07T10:01:00Z")),
        None
    );

    book.record_pull(NGINX.into(), "a", Duration::from_secs(4), 100);
    book.record_pull(NGINX.into(), "b", Duration::from_secs(8), 100);
    let now = ts("2026-12-07T10:00:00Z");
    assert!(book.prune_due(now));
    book.prune(now, &BTreeSet::from(["b".to_string()]));
    assert_eq!(
        book.pull_figures(&[NGINX.to_string()], &BTreeMap::new())[NGINX].nodes,
        1
    );
    assert!(!book.prune_due(ts("2026-12-07T10:04:59Z")));
    assert!(book.prune_due(ts("2026-12-07T10:05:00Z")));
    book.prune(now, &BTreeSet::new());
    assert!(
        book.pull_figures(&[NGINX.to_string()], &BTreeMap::new())
            .is_empty(),
        "no node left"
    );
}

#[test]
fn a_folded_event_updated_for_hours_is_read_once() {
    // A container in a crash loop: the kubelet updates its one Event (the count) for hours,
    // each update renewing the Event's time to live.
    let mut book = StartsBook::default();
    let first = ts("2026-12-07T08:00:00Z");
    assert!(book.first_sight("e1", first));
    let nodes = BTreeSet::new();
    for minutes in (5..=300).step_by(5) {
        let now = first + SignedDuration::from_mins(minutes);
        book.prune(now, &nodes);
        assert!(
            !book.first_sight("e1", now),
            "counted again after {minutes} min"
        );
    }
    let gone = first + SignedDuration::from_mins(300) + REMEMBER_SEEN;
    book.prune(gone, &nodes);
    assert!(
        book.first_sight("e1", gone),
        "forgotten two hours after it was last seen"
    );
}

#[test]
fn a_new_leader_keeps_what_the_status_kept_and_drops_a_stale_share() {
    let mut book = StartsBook::default();
    let previous = PrefetchStatus {
        starts: Some(StartsStatus {
            warm: 4,
            cold: 1,
            warm_percent_last_hour: Some(80),
            counted_through: Some(Time(ts("2026-12-07T10:00:00Z"))),
            ..StartsStatus::default()
        }),
        pulls: BTreeMap::from([(
            NGINX.to_string(),
            ImagePullStatus {
                size_bytes: 100,
                median_seconds: 6.5,
                slowest_seconds: 9.0,
                nodes: 3,
            },
        )]),
        ..PrefetchStatus::default()
    };
    // Hours later, with no Event of the last hour left to relist.
    let now = ts("2026-12-07T13:00:00Z");
    let status = book
        .status_of(&key("u1"), previous.starts.as_ref(), now)
        .unwrap();
    assert_eq!((status.warm, status.cold), (4, 1), "the counts carry over");
    assert_eq!(status.warm_percent_last_hour, None, "no start in this hour");
    assert_eq!(
        book.pull_figures(&[NGINX.to_string()], &previous.pulls)[NGINX].median_seconds,
        6.5,
        "the prefetch pods that measured them are gone: the status keeps them"
    );
    let warm = Pulled::AlreadyPresent {
        image: "nginx:1.28".into(),
    };
    let counted = book.count(
        &key("u1"),
        Some(&previous),
        &start(&warm, "2026-12-07T13:00:01Z"),
        Some(NGINX),
    );
    assert_eq!(
        counted,
        Some(Counted {
            saved: Some(Duration::from_millis(6_500))
        }),
        "a warm start saves the median the status kept"
    );
}
