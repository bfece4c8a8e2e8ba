//! Logging for both binaries: text for people, JSON for log pipelines; `RUST_LOG` filters
//! (default `info`). Logs go to stderr.

use tracing_subscriber::EnvFilter;

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

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_new(filter_spec(std::env::var("RUST_LOG").ok()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
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
