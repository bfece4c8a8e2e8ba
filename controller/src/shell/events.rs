//! Events on Prefetches and Nodes, through kube-runtime's `Recorder`, one per distinct
//! message.
//!
//! The Recorder folds an event into the series of an earlier one with the same type, action,
//! reason and object (for six minutes), and a series keeps the first event's note: on a real
//! API server, "Deployment web brings nginx:1.30" showed as the first rollout's "brings
//! nginx:1.26" with a higher count. Keyed by the message too, a repeated message still folds
//! into one Event with a count, and a different message is an Event of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::core::severity::Severity;

/// As long as the Recorder folds repeats into a series.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// (object uid, reason, note).
type MessageKey = (String, String, String);

pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<MessageKey, (Recorder, Timestamp)>>,
}

impl EventPublisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = (
            reference.uid.clone().unwrap_or_default(),
            event.reason.clone(),
            event.note.clone().unwrap_or_default(),
        );
        let recorder = {
            // A poisoned map still holds whole entries: take it.
            let mut recorders = prefetch_shell::locks::lock(&self.recorders);
            // Bounded by the messages of the last six minutes.
            recorders.retain(|_, (_, last)| now.duration_since(*last) < SERIES_WINDOW);
            let (recorder, last) = recorders.entry(key).or_insert_with(|| {
                (
                    Recorder::new(self.client.clone(), self.reporter.clone()),
                    now,
                )
            });
            *last = now;
            recorder.clone()
        };
        recorder.publish(event, reference).await
    }
}

/// The Event type of an event the core typed `type_` (see [`Severity::of`]).
pub fn event_type(type_: &str) -> EventType {
    match Severity::of(type_) {
        Severity::Warning => EventType::Warning,
        Severity::Normal => EventType::Normal,
    }
}
