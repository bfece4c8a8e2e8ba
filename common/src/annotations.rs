//! Names on the wire that other components (and users' tooling) rely on.

/// Set by the webhook on a Deployment: JSON array of the images new in the change.
pub const PREFETCH_IMAGES: &str = "cache.techsquad.rocks/prefetch-images";
/// Set by the webhook on a Deployment: RFC 3339 UTC time of the change.
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

/// The scheduling gate the pod webhook adds to a rollout's new pods (DESIGN.md section 9).
pub const SCHEDULING_GATE: &str = "cache.techsquad.rocks/prefetch";
/// Label on a gated pod naming the Prefetch whose round releases it.
pub const GATED_BY_LABEL: &str = "cache.techsquad.rocks/gated-by";
/// Annotation on a gated pod: RFC 3339 time after which it is released whatever happened.
pub const GATED_UNTIL_ANNOTATION: &str = "cache.techsquad.rocks/gated-until";
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
    let requested_at = annotations.get(PREFETCH_REQUESTED_AT)?.parse().ok()?;
    let images = serde_json::from_str(annotations.get(PREFETCH_IMAGES)?).ok()?;
    Some(Signal {
        images,
        requested_at,
    })
}

/// RFC 3339 UTC with second precision, as the webhook writes times.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    // The second (floored, as strftime's %S), printed by jiff's RFC 3339 printer, which writes
    // no fraction for a whole second: a fifth of the cost of interpreting a strftime format
    // (the webhook stamps every rollout signal and gated pod).
    let floored = t.as_second() - i64::from(t.subsec_nanosecond() < 0);
    match jiff::Timestamp::from_second(floored) {
        Ok(second) => second.to_string(),
        Err(_) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// What the strftime format gave, from year 1 to 9999, whole seconds or not.
        #[test]
        fn rfc3339_is_the_strftime_format(
            second in -62_135_596_800i64..253_402_300_799,
            nanosecond in 0i32..1_000_000_000,
        ) {
            let t = jiff::Timestamp::new(second, nanosecond).unwrap();
            proptest::prop_assert_eq!(rfc3339(t), t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }

    #[test]
    fn rfc3339_has_second_precision() {
        let t: jiff::Timestamp = "2026-11-24T05:18:53.999Z".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-24T05:18:53Z");
        let t: jiff::Timestamp = "1969-12-31T23:59:59.5Z".parse().unwrap();
        assert_eq!(rfc3339(t), "1969-12-31T23:59:59Z");
    }
}
