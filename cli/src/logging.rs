//! The process's logging: tracing to stderr that never blocks and never stops the process.

use crate::args::LogFormat;

/// Logs go to stderr through a thread of their own ([`tracing_appender::non_blocking`]), so a slow or
/// stalled reader (a paused pager, journald restarting) never blocks the runtime's workers, and a line
/// that cannot be written (EPIPE once the reader has gone) or does not fit the buffer is dropped and
/// counted instead: logging must never stop the process. tracing-subscriber's own report of a failed
/// write is off, because it goes through `eprintln!`, which panics on a closed stderr.
///
/// `format`: text lines, or JSON objects with stable names (`timestamp`, `level`, `message`, then the
/// event's own fields at the top level) for log shippers.
pub fn init(demo: bool, format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let default = if demo { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("RINGSEAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // A few MiB at most while the reader is stalled; more lines are dropped and counted.
        .buffered_lines_limit(LOG_BUFFERED_LINES)
        .thread_name("ringseal-log")
        .finish(Stderr);
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Counted {
            inner: writer,
            dropped,
        })
        .with_target(false)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // No spans are used: without the span keys every line has the same shape.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    guard
}

/// Log lines that may wait for a stalled stderr before new ones are dropped.
const LOG_BUFFERED_LINES: usize = 8192;

/// The log thread's sink: stderr, whose failures drop the line (counted) instead of failing.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => {
                ringseal::metrics::log_lines_dropped(1);
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The non-blocking writer, reporting the lines it dropped because its buffer was full.
#[derive(Clone)]
struct Counted {
    inner: tracing_appender::non_blocking::NonBlocking,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Counted {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        let n = self.inner.write(buf);
        let dropped = self.dropped.dropped_lines();
        let before = REPORTED.swap(dropped, Ordering::Relaxed);
        if dropped > before {
            ringseal::metrics::log_lines_dropped((dropped - before) as u64);
        }
        n
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
