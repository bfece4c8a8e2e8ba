//! Runs the real binaries of the workspace as child processes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the workspace binaries: beside the running test or bench executable
/// (`target/<profile>/`), or `PREFETCH_BIN_DIR`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("PREFETCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()?;
            let mut dir = exe
                .parent()
                .context("executable has no directory")?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build the workspace binaries first (`cargo build --workspace --bins`, which `make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace binary `name` ([`binary`]) followed by `args`.
fn command_line(name: &str, args: &[String]) -> anyhow::Result<Vec<OsString>> {
    Ok(std::iter::once(binary(name)?.into_os_string())
        .chain(args.iter().map(OsString::from))
        .collect())
}

/// Log lines kept per child process; older ones are dropped.
pub const MAX_KEPT_LOG_LINES: usize = 10_000;

/// A workspace binary running as a child process (JSON logs on stderr), killed on drop.
pub struct ChildProcess {
    child: Child,
    label: &'static str,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl ChildProcess {
    /// Starts `binary` and waits for the JSON log line whose message is `started_message`;
    /// returns the process and that line (which reports the bound addresses).
    pub async fn start(
        binary_name: &str,
        label: &'static str,
        args: &[String],
        kubeconfig: &Path,
        started_message: &str,
        echo_logs: bool,
    ) -> anyhow::Result<(Self, serde_json::Value)> {
        let command = command_line(binary_name, args)?;
        Self::start_command(&command, label, kubeconfig, started_message, echo_logs).await
    }

    /// As [`Self::start`], running `command`: a program and its arguments, such as an image's
    /// ELF loader, the binary taken out of the image and the binary's arguments.
    pub async fn start_command(
        command: &[OsString],
        label: &'static str,
        kubeconfig: &Path,
        started_message: &str,
        echo_logs: bool,
    ) -> anyhow::Result<(Self, serde_json::Value)> {
        let (program, args) = command.split_first().context("empty command")?;
        let binary_name = Path::new(program).display().to_string();
        let mut child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            // The harness reads an info event: never filter it out.
            .env(
                "RUST_LOG",
                std::env::var("PREFETCH_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary_name}"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        let started_message = started_message.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut started_tx = Some(started_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if echo_logs {
                    eprintln!("[{label}] {line}");
                }
                // Only the start-up lines are parsed: under load (the benchmark) this task
                // shares a thread with the load generator.
                if started_tx.is_some()
                    && let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                    && entry["message"] == started_message.as_str()
                    && let Some(tx) = started_tx.take()
                {
                    let _ = tx.send(entry);
                }
                let mut logs = sink.lock().unwrap_or_else(|p| p.into_inner());
                if logs.len() == MAX_KEPT_LOG_LINES {
                    logs.pop_front();
                }
                logs.push_back(line);
            }
        });
        let entry = tokio::time::timeout(Duration::from_secs(30), started_rx)
            .await
            .with_context(|| format!("{binary_name} did not start within 30 s"))?
            .with_context(|| format!("{binary_name} exited before starting"))?;
        Ok((Self { child, label, logs }, entry))
    }

    /// The most recent log lines (at most [`MAX_KEPT_LOG_LINES`]).
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let label = self.label;
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{label} did not exit after SIGTERM"))??)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        Ok(self.child.kill().await?)
    }
}

fn address(entry: &serde_json::Value, field: &str) -> anyhow::Result<SocketAddr> {
    Ok(entry[field]
        .as_str()
        .with_context(|| format!("{field} missing from the start-up log line"))?
        .parse()?)
}

/// A running prefetch-webhook, killed on drop.
pub struct WebhookProcess {
    pub process: ChildProcess,
    pub admission_addr: SocketAddr,
    pub ops_addr: SocketAddr,
}

pub struct WebhookOptions {
    pub kubeconfig: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub extra_args: Vec<String>,
    /// Copy the webhook's log lines to stderr (captured by the test harness, shown on failure).
    pub echo_logs: bool,
    /// Runs something else than the workspace's `prefetch-webhook`: given the webhook's
    /// arguments, the whole command line (the image tests run the binary taken out of the
    /// webhook image, or the image as a container).
    pub launcher: Option<Launcher>,
}

/// Turns the webhook's arguments into the command line that runs it.
pub type Launcher = Box<dyn FnOnce(&[String]) -> Vec<OsString> + Send>;

impl WebhookOptions {
    /// Serving `tls.crt`/`tls.key` from `cert_dir` (as written by `prefetch-certs`).
    pub fn with_cert_dir(kubeconfig: &Path, cert_dir: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
            cert_file: cert_dir.join("tls.crt"),
            key_file: cert_dir.join("tls.key"),
            extra_args: Vec::new(),
            echo_logs: false,
            launcher: None,
        }
    }
}

impl WebhookProcess {
    /// Starts the webhook on 127.0.0.1 with OS-chosen ports and waits until it is ready.
    pub async fn start(options: WebhookOptions) -> anyhow::Result<Self> {
        let webhook = Self::spawn(options).await?;
        webhook.wait_ready(Duration::from_secs(30)).await?;
        Ok(webhook)
    }

    /// Starts the webhook and returns once it listens, ready or not (its caches may never
    /// sync: an unreachable API server, a missing CRD).
    pub async fn spawn(options: WebhookOptions) -> anyhow::Result<Self> {
        let mut args: Vec<String> = [
            "--listen-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--tls-cert-file".into(),
            options.cert_file.display().to_string(),
        ]);
        args.extend([
            "--tls-key-file".into(),
            options.key_file.display().to_string(),
        ]);
        args.extend(options.extra_args);
        let command = match options.launcher {
            Some(launch) => launch(&args),
            None => command_line("prefetch-webhook", &args)?,
        };
        let (process, entry) = ChildProcess::start_command(
            &command,
            "webhook",
            &options.kubeconfig,
            "prefetch-webhook listening",
            options.echo_logs,
        )
        .await?;
        Ok(Self {
            process,
            admission_addr: address(&entry, "admission")?,
            ops_addr: address(&entry, "ops")?,
        })
    }

    /// Polls /readyz until 200.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(self.ops_addr, "/readyz").await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("prefetch-webhook not ready within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// The current value of one metric series (`name` or `name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(metric_value(
            &http_get(self.ops_addr, "/metrics").await?.1,
            series,
        ))
    }

    pub async fn terminate(self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate(within).await
    }
}

/// A running prefetch-controller, killed on drop.
pub struct ControllerProcess {
    pub process: ChildProcess,
    pub metrics_addr: SocketAddr,
}

impl ControllerProcess {
    /// Starts the controller with its metrics on 127.0.0.1 (OS-chosen port); `args` are added.
    pub async fn start(
        kubeconfig: &Path,
        args: &[&str],
        label: &'static str,
    ) -> anyhow::Result<Self> {
        let mut all: Vec<String> = ["--metrics-addr", "127.0.0.1:0", "--log-format", "json"]
            .map(String::from)
            .to_vec();
        all.extend(args.iter().map(|s| s.to_string()));
        let (process, entry) = ChildProcess::start(
            "prefetch-controller",
            label,
            &all,
            kubeconfig,
            "prefetch-controller starting",
            true,
        )
        .await?;
        Ok(Self {
            process,
            metrics_addr: address(&entry, "metrics")?,
        })
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(self.metrics_addr, "/metrics").await?.1)
    }

    pub async fn terminate(self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate(within).await
    }
}

/// Polls `path` on a plain-HTTP ops address until `(status, body)` satisfies `want`; the last
/// answer, or an error naming it after `within`.
pub async fn until_http(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> anyhow::Result<(u16, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = http_get(addr, path).await;
        if let Ok((status, body)) = &answer
            && want(*status, body)
        {
            return Ok((*status, body.clone()));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{path} never gave the expected answer within {within:?}; last: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET for the plain ops endpoints: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<axum::body::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of one series in Prometheus text (`name` or `name{labels}` exactly), summed over
/// the lines that carry it; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value)
}
