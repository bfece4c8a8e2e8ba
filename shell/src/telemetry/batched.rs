//! A log writer that takes lines without a system call: each line is copied into a shared
//! buffer, and a thread of its own writes the buffer to stderr in one call every
//! [`FLUSH_INTERVAL`], or sooner once [`HIGH_WATER_BYTES`] have gathered.
//!
//! Why not a write per line: a write to stderr is a system call that wakes whatever reads the
//! log pipe, and blocks the logging task when that reader falls behind and the pipe is full.
//! Measured on the webhook, those writes were about an eighth of its CPU per Deployment review
//! (one log line each). A queue that hands each line to a writer thread (tracing-appender's
//! `non_blocking`) cost more still on a busy core: a message and a thread wake-up per line.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Gathered bytes that wake the writer before the interval is up.
pub const HIGH_WATER_BYTES: usize = 64 * 1024;
/// Bytes held at most; past this (the log reader has stopped reading), lines are dropped and
/// counted rather than held or waited for.
pub const CAPACITY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    stopping: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
    capacity: usize,
    high_water: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines behind it: keep using them.
        crate::locks::lock(&self.pending)
    }
}

/// The `MakeWriter` handed to tracing-subscriber; cheap to clone.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Owns the writer thread: [`BatchedWriterThread::stop`] writes out what is pending and
/// joins it.
pub struct BatchedWriterThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedWriter {
    /// A writer to `sink` and the thread that writes to it.
    pub fn spawn<W: Write + Send + 'static>(
        sink: W,
        interval: Duration,
        high_water: usize,
        capacity: usize,
    ) -> io::Result<(BatchedWriter, BatchedWriterThread)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            capacity,
            high_water,
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(&shared, sink, interval)
            })?;
        Ok((
            BatchedWriter {
                shared: shared.clone(),
            },
            BatchedWriterThread {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Lines dropped because the buffer was full.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W, interval: Duration) {
    let mut spare = Vec::new();
    let mut last_write = Instant::now();
    loop {
        let stopping = {
            let mut pending = shared.lock();
            // Asleep while there is nothing (the first line of a batch wakes the thread), then
            // let lines gather until the interval since the last write is up: one write per
            // interval rather than one per line.
            loop {
                if pending.stopping || pending.bytes.len() >= shared.high_water {
                    break;
                }
                let waited = last_write.elapsed();
                let wait = if pending.bytes.is_empty() {
                    None
                } else if waited >= interval {
                    break;
                } else {
                    Some(interval - waited)
                };
                pending = match wait {
                    None => shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner),
                    Some(wait) => {
                        shared
                            .wake
                            .wait_timeout(pending, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
            }
            std::mem::swap(&mut pending.bytes, &mut spare);
            pending.stopping
        };
        if !spare.is_empty() {
            // Nowhere to report a failed write to stderr; the lines are gone either way.
            let _ = sink.write_all(&spare).and_then(|()| sink.flush());
            spare.clear();
            // Keep the spare buffer from holding a burst's worth of memory for good.
            spare.shrink_to(shared.high_water);
        }
        last_write = Instant::now();
        if stopping {
            return;
        }
    }
}

impl BatchedWriterThread {
    /// Writes out the pending lines and stops the thread. Lines logged afterwards are dropped.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        let _ = thread.join();
    }
}

impl Drop for BatchedWriterThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One event's line (tracing-subscriber formats an event whole and writes it in one call).
pub struct LineSink<'a> {
    shared: &'a Shared,
}

impl Write for LineSink<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        if pending.stopping || pending.bytes.len() + line.len() > self.shared.capacity {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Reported as written: a log line must never fail or stall the code that logs.
            return Ok(line.len());
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        // Only the first line of a batch and the one past the high-water mark wake the writer.
        let wake = first
            || pending.bytes.len() - line.len() < self.shared.high_water
                && pending.bytes.len() >= self.shared.high_water;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineSink {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting the writes it receives.
    #[derive(Clone, Default)]
    struct Recorded {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &BatchedWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn stop_writes_every_pending_line_in_order() {
        let sink = Recorded::default();
        let (writer, mut thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_secs(3600), 1 << 20, 1 << 20)
                .unwrap();
        for i in 0..100 {
            line(&writer, &format!("line {i}\n"));
        }
        thread.stop();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap(),
            expected
        );
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn lines_are_gathered_into_few_writes() {
        let sink = Recorded::default();
        let (writer, mut thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_secs(3600), 1 << 20, 1 << 20)
                .unwrap();
        for _ in 0..1000 {
            line(&writer, "a line of a log\n");
        }
        thread.stop();
        // The first line may be written alone if the thread was already awake; the rest wait
        // for the (hour-long) interval or the stop, so they go out together.
        assert!(
            sink.writes.load(Ordering::Relaxed) <= 2,
            "{:?}",
            sink.writes
        );
        assert_eq!(sink.bytes.lock().unwrap().len(), 1000 * 16);
    }

    #[test]
    fn passing_the_high_water_mark_wakes_the_writer_before_the_interval() {
        let sink = Recorded::default();
        let (writer, _thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_secs(3600), 64, 1 << 20).unwrap();
        line(&writer, &"x".repeat(100));
        // Woken by the high-water mark, not the hour-long interval: wait for it, bounded.
        for _ in 0..500 {
            if !sink.bytes.lock().unwrap().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writer was not woken by a buffer past its high-water mark");
    }

    #[test]
    fn pending_lines_are_written_once_the_interval_is_up() {
        let sink = Recorded::default();
        let (writer, _thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_millis(10), 1 << 20, 1 << 20)
                .unwrap();
        line(&writer, "one line\n");
        for _ in 0..500 {
            if *sink.bytes.lock().unwrap() == b"one line\n" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("a pending line was not written after its interval");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_whole_lines() {
        let sink = Recorded::default();
        let (writer, mut thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_secs(3600), 1 << 20, 25).unwrap();
        for i in 0..5 {
            line(&writer, &format!("line {i}\n"));
        }
        thread.stop();
        // 7 bytes a line, 25 bytes held: three lines fit, two are dropped whole.
        assert_eq!(
            String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap(),
            "line 0\nline 1\nline 2\n"
        );
        assert_eq!(writer.dropped_lines(), 2);
    }

    #[test]
    fn lines_after_stop_are_dropped_not_blocked() {
        let sink = Recorded::default();
        let (writer, mut thread) =
            BatchedWriter::spawn(sink.clone(), Duration::from_millis(1), 1 << 20, 1 << 20).unwrap();
        thread.stop();
        line(&writer, "late\n");
        assert!(sink.bytes.lock().unwrap().is_empty());
        assert_eq!(writer.dropped_lines(), 1);
    }
}
