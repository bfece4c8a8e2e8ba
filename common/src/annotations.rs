//! Names on the wire that other components (and users' tooling) rely on.

/// Set by the webhook on a Deployment: JSON array of the images new in the change.
pub const PREFETCH_IMAGES: &str = "cache.techsquad.rocks/prefetch-images";
/// Set by the webhook on a Deployment: RFC 3339 UTC time of the change, with microseconds, so
/// two changes within one second are two signals (second-precision values are still read).
pub const PREFETCH_REQUESTED_AT: &str = "cache.techsquad.rocks/prefetch-requested-at";

/// Default namespace and name of the controller's leader Lease. The webhook watches the Lease
/// the controller holds, so both binaries' `--lease-namespace`/`--lease-name` default to these.
pub const DEFAULT_LEASE_NAMESPACE: &str = "prefetch-system";
pub const DEFAULT_LEASE_NAME: &str = "prefetch-controller";

/// Label on every prefetch pod.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "prefetch-controller";
/// Label on every prefetch pod naming its Prefetch.
pub const PREFETCH_LABEL: &str = "cache.techsquad.rocks/prefetch";

pub const API_GROUP: &str = "cache.techsquad.rocks";
pub const API_VERSION: &str = "v1";
pub const KIND: &str = "Prefetch";

/// The scheduling gate the pod webhook adds to a rollout's new pods (design:
/// docs/src/design.md#warm-rollouts).
pub const SCHEDULING_GATE: &str = "cache.techsquad.rocks/prefetch";
/// Label on a gated pod naming the Prefetch whose round releases it.
pub const GATED_BY_LABEL: &str = "cache.techsquad.rocks/gated-by";
/// Annotation on a gated pod: RFC 3339 time after which it is released whatever happened.
pub const GATED_UNTIL_ANNOTATION: &str = "cache.techsquad.rocks/gated-until";
/// Annotation on a gated pod: the `prefetch-requested-at` of the signal it was gated for. Its
/// release waits for that signal's round, not an earlier one (and not for a `gated-until`
/// less `gate_timeout`, which a changed `gate_timeout` would move).
pub const GATED_FOR_ANNOTATION: &str = "cache.techsquad.rocks/gated-for";
/// Label the controller keeps on exactly the namespaces that hold a Prefetch with
/// `gate_rollouts`, value `"true"`: the pod hook's namespaceSelector matches it, so the pods of
/// every other namespace never reach the webhook (design: docs/src/design.md#warm-rollouts).
pub const GATED_NAMESPACE_LABEL: &str = "cache.techsquad.rocks/gated-rollouts";
pub const GATED_NAMESPACE_VALUE: &str = "true";
/// Label the Deployment controller puts on a ReplicaSet's pods; the ReplicaSet is named
/// `<deployment>-<this value>`.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A rollout signal as the webhook wrote it on a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// Normalized images new in the rollout.
    pub images: Vec<String>,
    pub requested_at: jiff::Timestamp,
}

/// The rollout signal in a Deployment's annotations; `None` when absent or unreadable.
pub fn rollout_signal(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<Signal> {
    let annotations = annotations?;
    let requested_at = signal_time(annotations.get(PREFETCH_REQUESTED_AT)?)?;
    let images = serde_json::from_str(annotations.get(PREFETCH_IMAGES)?).ok()?;
    Some(Signal {
        images,
        requested_at,
    })
}

/// A signal time as written in an annotation, to the microsecond: the precision the status
/// records it with (`MicroTime`), so a signal read again from the status compares equal.
pub fn signal_time(text: &str) -> Option<jiff::Timestamp> {
    let t: jiff::Timestamp = text.parse().ok()?;
    let micros = t.as_microsecond();
    jiff::Timestamp::from_microsecond(micros).ok()
}

/// RFC 3339 UTC with microseconds, as the webhook writes the rollout signal and gated-until:
/// two changes within one second must stay two signals.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    // Six digits always, so every stamp has one length and sorts as text. Written digit by
    // digit: the pod gate writes two per gated pod, and strftime's parsing of its format
    // string cost several times the rest of it.
    let dt = jiff::tz::Offset::UTC.to_datetime(t);
    let Ok(year) = u32::try_from(dt.year()) else {
        return rfc3339_strftime(t);
    };
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (0, 4, year),
        (5, 2, u32::from(dt.month().unsigned_abs())),
        (8, 2, u32::from(dt.day().unsigned_abs())),
        (11, 2, u32::from(dt.hour().unsigned_abs())),
        (14, 2, u32::from(dt.minute().unsigned_abs())),
        (17, 2, u32::from(dt.second().unsigned_abs())),
        (20, 6, dt.subsec_nanosecond().unsigned_abs() / 1000),
    ];
    for (at, width, mut value) in fields {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    String::from_utf8(out.to_vec()).unwrap_or_else(|_| rfc3339_strftime(t))
}

/// The same stamp through strftime (years before 1 AD, which no cluster writes).
fn rfc3339_strftime(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every stamp reads back as the same instant, to the microsecond, and stamps sort as
        /// the instants do (annotations are compared as times, but people sort them as text).
        #[test]
        fn rfc3339_round_trips_to_the_microsecond(
            a in 0i64..253_402_300_799_000_000,
            b in 0i64..253_402_300_799_000_000,
        ) {
            let (ta, tb) = (
                jiff::Timestamp::from_microsecond(a).unwrap(),
                jiff::Timestamp::from_microsecond(b).unwrap(),
            );
            proptest::prop_assert_eq!(signal_time(&rfc3339(ta)), Some(ta));
            proptest::prop_assert_eq!(rfc3339(ta).cmp(&rfc3339(tb)), ta.cmp(&tb));
        }
    }

    proptest::proptest! {
        /// Written digit by digit, a stamp is what strftime writes, from year 1 to 9999.
        #[test]
        fn rfc3339_is_strftimes(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            let t = jiff::Timestamp::from_microsecond(micros).unwrap();
            proptest::prop_assert_eq!(rfc3339(t), rfc3339_strftime(t));
        }
    }

    #[test]
    fn two_changes_in_one_second_are_two_stamps() {
        let first: jiff::Timestamp = "2026-11-24T05:18:53.100Z".parse().unwrap();
        let second: jiff::Timestamp = "2026-11-24T05:18:53.900Z".parse().unwrap();
        assert_eq!(rfc3339(first), "2026-11-24T05:18:53.100000Z");
        assert_ne!(rfc3339(first), rfc3339(second));
        assert_eq!(
            rfc3339("1969-12-31T23:59:59.5Z".parse().unwrap()),
            "1969-12-31T23:59:59.500000Z"
        );
    }

    #[test]
    fn signal_time_reads_old_and_new_stamps_to_the_microsecond() {
        let whole = signal_time("2026-11-24T05:18:53Z").unwrap();
        assert_eq!(whole.to_string(), "2026-11-24T05:18:53Z");
        let nanos = signal_time("2026-11-24T05:18:53.123456789Z").unwrap();
        assert_eq!(nanos.to_string(), "2026-11-24T05:18:53.123456Z");
        assert_eq!(signal_time("yesterday"), None);
    }

    #[test]
    fn rollout_signal_needs_both_annotations() {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            PREFETCH_REQUESTED_AT.to_string(),
            "2026-11-24T05:18:53.250000Z".to_string(),
        );
        assert_eq!(rollout_signal(Some(&annotations)), None);
        annotations.insert(
            PREFETCH_IMAGES.to_string(),
            r#"["docker.io/library/nginx:1.27"]"#.into(),
        );
        let signal = rollout_signal(Some(&annotations)).unwrap();
        assert_eq!(signal.images, ["docker.io/library/nginx:1.27"]);
        assert_eq!(signal.requested_at.to_string(), "2026-11-24T05:18:53.25Z");
    }
}
