//! Leader election on a `coordination.k8s.io/v1` Lease (15 s lease, 10 s renew deadline, 2 s retry;
//! design: docs/src/design.md#the-reconciler), as client-go does it: the holder renews; anyone may
//! take a lease whose renewTime + leaseDurationSeconds has passed; writes carry the resourceVersion
//! they read, so two candidates can never both win (the loser gets 409 Conflict).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take the lease (free, or its holder stopped renewing).
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return LeaseAction::Acquire;
    }
    if holder == me {
        return LeaseAction::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let expired = spec
        .renew_time
        .as_ref()
        .is_none_or(|renewed| renewed.0.checked_add(duration).is_ok_and(|end| end < now));
    if expired {
        LeaseAction::Acquire
    } else {
        LeaseAction::Follow {
            holder: holder.to_string(),
        }
    }
}

/// The lease as `me` writes it when acquiring or renewing.
pub fn claimed(previous: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|s| s.holder_identity.as_deref()) == Some(me);
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if ours {
            previous.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// Campaigns for and keeps the lease until `shutdown`; `leading` says whether we hold it.
/// Leadership is reported lost when no renewal succeeded within the renew deadline.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    me: String,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let now = Timestamp::now();
        // A write that hangs (an API server that stopped answering) must not hold shutdown.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = attempt(&api, &name, &me, now) => outcome,
        };
        match outcome {
            Ok(true) => {
                if !*leading.borrow() {
                    tracing::info!(lease = %format!("{namespace}/{name}"), identity = %me, "became leader");
                }
                last_renewed = Some(tokio::time::Instant::now());
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(identity = %me, "another replica holds the lease; stepping down");
                }
                leading.send_replace(false);
            }
            Err(err) => {
                tracing::warn!(error = %err, "lease update failed");
                if last_renewed.is_some_and(|t| t.elapsed() > RENEW_DEADLINE) && *leading.borrow() {
                    tracing::error!(
                        "could not renew the lease within the renew deadline; stepping down"
                    );
                    leading.send_replace(false);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    if *leading.borrow() {
        release(&api, &name, &me).await;
        leading.send_replace(false);
    }
}

/// One campaign step: true when we hold the lease afterwards.
async fn attempt(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(claimed(None, me, now)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    match decide(lease.spec.as_ref(), me, now) {
        LeaseAction::Follow { .. } => Ok(false),
        LeaseAction::Acquire | LeaseAction::Renew => {
            lease.spec = Some(claimed(lease.spec.as_ref(), me, now));
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// Hands the lease back on shutdown so a standby takes over at once, not after 15 s.
async fn release(api: &Api<Lease>, name: &str, me: &str) {
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    if lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(me)
    {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!("released the lease"),
        Err(err) => tracing::warn!(error = %err, "could not release the lease; it expires in 15 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = t("2026-11-22T10:00:20Z");
        assert_eq!(decide(None, "a", now), LeaseAction::Acquire);
        assert_eq!(
            decide(Some(&lease(None, "2026-11-22T10:00:19Z")), "a", now),
            LeaseAction::Acquire
        );
        assert_eq!(
            decide(Some(&lease(Some("a"), "2026-11-22T10:00:19Z")), "a", now),
            LeaseAction::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), "2026-11-22T10:00:10Z")), "a", now),
            LeaseAction::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), "2026-11-22T10:00:04Z")), "a", now),
            LeaseAction::Acquire,
            "expired 1 s ago"
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), "2026-11-22T10:00:05Z")), "a", now),
            LeaseAction::Follow { holder: "b".into() },
            "expires exactly now"
        );
    }

    #[test]
    fn claims_count_transitions_only_on_a_new_holder() {
        let now = t("2026-11-22T10:00:20Z");
        let taken = claimed(Some(&lease(Some("b"), "2026-11-22T10:00:00Z")), "a", now);
        assert_eq!(
            (taken.holder_identity.as_deref(), taken.lease_transitions),
            (Some("a"), Some(4))
        );
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        let mut ours = lease(Some("a"), "2026-11-22T10:00:18Z");
        ours.acquire_time = Some(MicroTime(t("2026-11-22T09:00:00Z")));
        let renewed = claimed(Some(&ours), "a", now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(
            renewed.acquire_time,
            Some(MicroTime(t("2026-11-22T09:00:00Z")))
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(claimed(None, "a", now).lease_transitions, Some(0));
    }
}
