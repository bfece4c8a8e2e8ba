//! Logging for both binaries: text for people, JSON for log pipelines; `RUST_LOG` filters
//! (default `info`). Logs go to stderr, written in batches by a thread of their own
//! ([`batched`]): a line costs the code that logs it a copy, not a system call, and never
//! waits on a log reader that fell behind (lines past the buffer are dropped and counted in
//! `log_lines_dropped_total`).

mod batched;

use std::sync::{Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

pub use batched::{BatchedWriter, BatchedWriterThread};

static WRITER_THREAD: Mutex<Option<BatchedWriterThread>> = Mutex::new(None);
static WRITER: OnceLock<BatchedWriter> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` (default `info`), with kube-runtime's watcher kept to errors unless `RUST_LOG`
/// names kube_runtime: watch failures are logged by `watch::run_watch`, once per backoff step,
/// and kube-runtime's watcher would repeat a 403 at warn on every retry.
fn filter_spec(rust_log: Option<String>) -> String {
    let spec = rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    if spec.contains("kube_runtime") {
        spec
    } else {
        format!("{spec},kube_runtime::watcher=error")
    }
}

/// Writes out the pending log lines when dropped (see [`finish`]).
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        finish();
    }
}

/// Writes out the pending log lines and stops the writer thread. Call it before
/// `std::process::exit`, which runs no destructors; lines logged afterwards are dropped.
pub fn finish() {
    let thread = WRITER_THREAD
        .lock()
        .map(|mut slot| slot.take())
        .unwrap_or_else(|poisoned| poisoned.into_inner().take());
    // Stopped outside the lock: stopping waits for the last write.
    drop(thread);
}

/// Log lines dropped because stderr was not read fast enough (the buffer was full).
pub fn dropped_log_lines() -> u64 {
    WRITER.get().map_or(0, BatchedWriter::dropped_lines)
}

/// `log_lines_dropped_total`, read at each scrape.
#[derive(Debug, Default)]
pub struct DroppedLogLines;

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(dropped_log_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because stderr was not read fast enough",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Installs the global subscriber; keep the guard until the process ends. Where no writer
/// thread can be started, lines are written to stderr directly.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_new(filter_spec(std::env::var("RUST_LOG").ok()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let writer = match BatchedWriter::spawn(
        std::io::stderr(),
        batched::FLUSH_INTERVAL,
        batched::HIGH_WATER_BYTES,
        batched::CAPACITY_BYTES,
    ) {
        Ok((writer, thread)) => {
            if let Ok(mut slot) = WRITER_THREAD.lock() {
                *slot = Some(thread);
            }
            Some(WRITER.get_or_init(|| writer).clone())
        }
        Err(err) => {
            eprintln!("no log writer thread ({err}); writing log lines to stderr directly");
            None
        }
    };
    let writer = match writer {
        Some(batched) => BoxMakeWriter::new(batched),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = builder.with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    LogGuard(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_runtime_watcher_is_quiet_unless_asked_for() {
        assert_eq!(filter_spec(None), "info,kube_runtime::watcher=error");
        assert_eq!(
            filter_spec(Some("debug".into())),
            "debug,kube_runtime::watcher=error"
        );
        assert_eq!(
            filter_spec(Some("info,kube_runtime=debug".into())),
            "info,kube_runtime=debug"
        );
    }
}
