//! What the kubelet's `Pulled` Events say, read exactly as its image manager writes them
//! (pkg/kubelet/images/image_manager.go, Kubernetes 1.36):
//!
//! - `Successfully pulled image "<image>" in <pull> (<total> including waiting). Image size:
//!   <bytes> bytes.`: a cold start. `<pull>` is the pull itself; `<total>` adds the time the
//!   pull waited in the kubelet's queue, which is what the container waited.
//! - `Container image "<image>" already present on machine` (or `... already present on machine
//!   and can be accessed by the pod`): a warm start.
//!
//! The Event names the pod as its `involvedObject`, and the container by `fieldPath`
//! (`spec.containers{name}`, `spec.initContainers{name}`, `spec.ephemeralContainers{name}`);
//! an image volume's pull names the pod alone, with no field path. Durations are Go's
//! `time.Duration` strings (`500ms`, `12.3s`, `1m2.5s`), truncated to milliseconds.

use std::time::Duration;

/// The prefix the kubelet's event recorder puts on a message it folded with similar ones
/// (more than ten Events of one pod and reason within ten minutes).
const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// Which part of the pod an Event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPart {
    Container(String),
    InitContainer(String),
    EphemeralContainer(String),
    /// An image volume: the kubelet names only the pod.
    ImageVolume,
}

impl PodPart {
    /// Reads an Event's `involvedObject.fieldPath`; `None` for a path that names no part the
    /// kubelet pulls an image for.
    pub fn from_field_path(field_path: Option<&str>) -> Option<PodPart> {
        let Some(path) = field_path.filter(|p| !p.is_empty()) else {
            return Some(PodPart::ImageVolume);
        };
        let (list, rest) = path.split_once('{')?;
        let name = rest.strip_suffix('}')?.to_string();
        match list {
            "spec.containers" => Some(PodPart::Container(name)),
            "spec.initContainers" => Some(PodPart::InitContainer(name)),
            "spec.ephemeralContainers" => Some(PodPart::EphemeralContainer(name)),
            _ => None,
        }
    }
}

/// A `Pulled` Event's message, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pulled {
    /// The image was on the node: the container started warm.
    AlreadyPresent { image: String },
    /// The kubelet pulled the image: the container started cold.
    Pulled {
        image: String,
        /// The pull itself.
        pull: Duration,
        /// The pull and its wait in the kubelet's queue: what the container waited.
        waited: Duration,
        /// The image's size as the runtime reported it (0 when it reported none).
        size_bytes: u64,
    },
}

impl Pulled {
    pub fn image(&self) -> &str {
        match self {
            Pulled::AlreadyPresent { image } | Pulled::Pulled { image, .. } => image,
        }
    }

    /// Reads a `Pulled` Event's message; `None` for a message in no form the kubelet writes.
    pub fn read(message: &str) -> Option<Pulled> {
        let message = message.strip_prefix(COMBINED_PREFIX).unwrap_or(message);
        if let Some(rest) = message.strip_prefix("Container image ") {
            let (image, rest) = quoted(rest)?;
            let known = rest == " already present on machine"
                || rest == " already present on machine and can be accessed by the pod";
            return known.then_some(Pulled::AlreadyPresent { image });
        }
        let rest = message.strip_prefix("Successfully pulled image ")?;
        let (image, rest) = quoted(rest)?;
        let (pull, rest) = rest.strip_prefix(" in ")?.split_once(" (")?;
        let (waited, rest) = rest.split_once(" including waiting)")?;
        let size = rest
            .strip_prefix(". Image size: ")?
            .strip_suffix(" bytes.")?;
        Some(Pulled::Pulled {
            image,
            pull: go_duration(pull)?,
            waited: go_duration(waited)?,
            size_bytes: size.parse().ok()?,
        })
    }
}

/// A Go `%q` string at the start of `text` (the kubelet quotes image references with it), and
/// what follows it. Image references hold no quotes or backslashes, so no escape is undone.
fn quoted(text: &str) -> Option<(String, &str)> {
    let rest = text.strip_prefix('"')?;
    let (inner, after) = rest.split_once('"')?;
    (!inner.is_empty() && !inner.contains('\\')).then(|| (inner.to_string(), after))
}

/// Parses a Go `time.Duration` string: `0`, or signed-less sequences of a decimal number and a
/// unit (`h`, `m`, `s`, `ms`, `us`, `µs`, `μs`, `ns`), such as `1h2m3.5s` or `500ms`.
pub fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let (unit, after) = unit_prefix(after)?;
        total = total.checked_add(scaled(number, unit)?)?;
        rest = after;
    }
    Some(total)
}

/// The unit at the start of `text`, as nanoseconds, and what follows it.
fn unit_prefix(text: &str) -> Option<(u128, &str)> {
    // Longest first: "ms" before "m", "ns" before nothing shorter.
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| text.starts_with(unit))
        .map(|(unit, nanos)| (*nanos, &text[unit.len()..]))
}

/// `number` (digits, an optional fraction) times `unit_nanos`, to the nanosecond.
fn scaled(number: &str, unit_nanos: u128) -> Option<Duration> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Digits past nanosecond precision are dropped, as Go drops them.
    let fraction: String = fraction.chars().take(18).collect();
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u128>().ok()? * unit_nanos / 10u128.pow(fraction.len() as u32)
    };
    let nanos = whole.checked_mul(unit_nanos)?.checked_add(fraction_nanos)?;
    let seconds = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(seconds, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests;
