//! The controller's leader Lease as the webhook reads it (design:
//! docs/src/design.md#warm-rollouts): pods are gated only while a controller renews it, since
//! nobody else would lift the gate.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;

/// The webhook gates only while the controller's Lease was renewed this recently (the
/// controller renews every 2 s; a Lease lasts 15 s).
pub const LEASE_FRESHNESS: SignedDuration = SignedDuration::from_secs(30);

/// Whether a renewal at `renewed` still counts as a controller leading at `now`.
pub fn is_fresh(renewed: Timestamp, now: Timestamp) -> bool {
    now.duration_since(renewed) <= LEASE_FRESHNESS
}

/// When a holder last renewed `lease`; `None` when nobody holds it or it was never renewed.
pub fn holder_renewed(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let held = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty());
    held.then(|| spec.renew_time.as_ref().map(|t| t.0))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_for_thirty_seconds() {
        let renewed = t("2026-11-22T03:00:00Z");
        assert!(is_fresh(renewed, t("2026-11-22T03:00:30Z")));
        assert!(!is_fresh(renewed, t("2026-11-22T03:00:31Z")));
    }

    #[test]
    fn only_a_held_lease_counts_as_renewed() {
        let lease = |holder: Option<&str>, renewed: Option<&str>| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(|r| MicroTime(t(r))),
                ..Default::default()
            }),
            ..Default::default()
        };
        let at = "2026-11-22T03:00:00Z";
        assert_eq!(holder_renewed(&lease(Some("c-1"), Some(at))), Some(t(at)));
        assert_eq!(holder_renewed(&lease(Some(""), Some(at))), None);
        assert_eq!(holder_renewed(&lease(None, Some(at))), None);
        assert_eq!(holder_renewed(&lease(Some("c-1"), None)), None);
        assert_eq!(holder_renewed(&Lease::default()), None);
    }
}
