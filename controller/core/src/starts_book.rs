//! What the controller remembers of starts and pulls while it leads (design:
//! docs/src/design.md#what-it-saved): which kubelet Events it counted, each Prefetch's
//! [`StartsTally`], each image's [`ImagePulls`], which Prefetches' counts changed since their
//! last round, and when each last had a `ColdStart` Event. Pure: the shell holds it under a
//! lock and passes the time in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use prefetch_common::{ImagePullStatus, PrefetchStatus, StartsStatus};

use crate::kubelet_events::Pulled;
use crate::starts::{ImagePulls, Start, StartsTally, pull_figures};

/// The API server keeps Events an hour (`--event-ttl`); a counted Event is remembered twice as
/// long, so a relist never counts one again.
pub const REMEMBER_SEEN: SignedDuration = SignedDuration::from_hours(2);
/// At most one `ColdStart` Event per Prefetch in this interval.
pub const COLD_EVENT_EVERY: SignedDuration = SignedDuration::from_mins(1);
/// How often Events past their time and the pulls of nodes that left are forgotten.
pub const PRUNE_EVERY: SignedDuration = SignedDuration::from_mins(5);

/// A Prefetch as the book knows it: its uid, and its namespace and name (for its round and its
/// metric series).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefetchKey {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct StartsBook {
    tallies: HashMap<String, (PrefetchKey, StartsTally)>,
    pulls: BTreeMap<String, ImagePulls>,
    /// Event uid -> when it was last seen. The kubelet keeps updating a folded Event (its
    /// count) and each update renews its time to live, so an Event is forgotten only long
    /// after it was last seen, never by when it was first reported.
    seen: HashMap<String, Timestamp>,
    /// Prefetches whose counts changed since their last round was asked for.
    changed: BTreeSet<PrefetchKey>,
    /// Prefetch uid -> when its last `ColdStart` Event was due.
    cold_published: HashMap<String, Timestamp>,
    pruned: Option<Timestamp>,
}

/// What counting a start gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    /// For a warm start: the median pull time measured for its image.
    pub saved: Option<Duration>,
}

impl StartsBook {
    /// Whether the Event `uid`, seen at `now`, is seen for the first time (and so is to be
    /// read).
    pub fn first_sight(&mut self, uid: &str, now: Timestamp) -> bool {
        self.seen.insert(uid.to_string(), now).is_none()
    }

    /// A prefetch pod's pull of `image` (normalized) on `node`.
    pub fn record_pull(&mut self, image: String, node: &str, pull: Duration, size_bytes: u64) {
        self.pulls
            .entry(image)
            .or_default()
            .record(node, pull, size_bytes);
    }

    /// Counts a start for `prefetch`, taking its counts over from `previous` (its cached
    /// status) the first time; `None` when an earlier process counted it. `image` is the
    /// start's image, normalized. A warm start saves the median pull this process measured for
    /// the image, else the one the status kept.
    pub fn count(
        &mut self,
        prefetch: &PrefetchKey,
        previous: Option<&PrefetchStatus>,
        start: &Start<'_>,
        image: Option<&str>,
    ) -> Option<Counted> {
        let resumed = previous.and_then(|s| s.starts.as_ref());
        let (_, tally) = self
            .tallies
            .entry(prefetch.uid.clone())
            .or_insert_with(|| (prefetch.clone(), StartsTally::resumed(resumed)));
        if !tally.count(start) {
            return None;
        }
        self.changed.insert(prefetch.clone());
        let warm = matches!(start.pulled, Pulled::AlreadyPresent { .. });
        let kept = |image: &str| {
            let figures = previous?.pulls.get(image)?;
            Duration::try_from_secs_f64(figures.median_seconds).ok()
        };
        let saved = image.filter(|_| warm).and_then(|image| {
            let measured = self.pulls.get(image).and_then(ImagePulls::median);
            measured.or_else(|| kept(image))
        });
        Some(Counted { saved })
    }

    /// Whether a `ColdStart` Event for `prefetch_uid` is due at `now` (and if so, notes it).
    pub fn cold_event_due(&mut self, prefetch_uid: &str, now: Timestamp) -> bool {
        let last = self.cold_published.get(prefetch_uid);
        if last.is_some_and(|t| now.duration_since(*t) < COLD_EVENT_EVERY) {
            return false;
        }
        self.cold_published.insert(prefetch_uid.to_string(), now);
        true
    }

    /// The starts a round of `prefetch` writes: its counts, taken over from `previous` (its
    /// cached status) when this process counted none yet, so the share of the last hour is
    /// this process's and not a figure an earlier leader left; `None` while nothing was
    /// ever counted.
    pub fn status_of(
        &mut self,
        prefetch: &PrefetchKey,
        previous: Option<&StartsStatus>,
        now: Timestamp,
    ) -> Option<StartsStatus> {
        if !self.tallies.contains_key(&prefetch.uid) {
            let resumed = StartsTally::resumed(Some(previous?));
            self.tallies
                .insert(prefetch.uid.clone(), (prefetch.clone(), resumed));
        }
        let (_, tally) = self.tallies.get_mut(&prefetch.uid)?;
        Some(tally.status(now))
    }

    /// The pull figures a round writes for `images`: measured here, else kept from
    /// `previous`.
    pub fn pull_figures(
        &self,
        images: &[String],
        previous: &BTreeMap<String, ImagePullStatus>,
    ) -> BTreeMap<String, ImagePullStatus> {
        pull_figures(images, &self.pulls, previous)
    }

    /// The Prefetches whose counts changed since this was last asked.
    pub fn take_changed(&mut self) -> BTreeSet<PrefetchKey> {
        std::mem::take(&mut self.changed)
    }

    /// Forgets the Prefetches not in `live` (uids); returns them, for their metric series.
    pub fn forget_gone(&mut self, live: &BTreeSet<String>) -> Vec<PrefetchKey> {
        let gone: Vec<String> = self
            .tallies
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|uid| {
                self.cold_published.remove(&uid);
                self.changed.retain(|key| key.uid != uid);
                self.tallies.remove(&uid).map(|(key, _)| key)
            })
            .collect()
    }

    /// Whether a prune is due at `now`: every [`PRUNE_EVERY`].
    pub fn prune_due(&self, now: Timestamp) -> bool {
        self.pruned
            .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
    }

    /// Forgets Events past [`REMEMBER_SEEN`] and the pulls of nodes not in `nodes`.
    pub fn prune(&mut self, now: Timestamp, nodes: &BTreeSet<String>) {
        self.pruned = Some(now);
        self.seen
            .retain(|_, at| now.duration_since(*at) < REMEMBER_SEEN);
        for pulls in self.pulls.values_mut() {
            pulls.retain_nodes(nodes);
        }
        self.pulls.retain(|_, pulls| pulls.median().is_some());
    }
}

#[cfg(test)]
mod tests;
