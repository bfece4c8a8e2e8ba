//! Runs the real binaries of the workspace as child processes.

use std::collections::VecDeque;
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

/// Log lines kept per child process; older ones are dropped.
pub const MAX_KEPT_LOG_LINES: usize = 10_000;

/// A running prefetch-webhook, killed on drop.
pub struct WebhookProcess {
    child: Child,
    pub admission_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
}

pub struct WebhookOptions {
    pub kubeconfig: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub extra_args: Vec<String>,
    /// Copy the webhook's log lines to stderr (captured by the test harness, shown on failure).
    pub echo_logs: bool,
}

impl WebhookOptions {
    /// Serving `tls.crt`/`tls.key` from `cert_dir` (as written by `prefetch-certs`).
    pub fn with_cert_dir(kubeconfig: &Path, cert_dir: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
            cert_file: cert_dir.join("tls.crt"),
            key_file: cert_dir.join("tls.key"),
            extra_args: Vec::new(),
            echo_logs: false,
        }
    }
}

impl WebhookProcess {
    /// Starts the webhook on 127.0.0.1 with OS-chosen ports and waits until it reports them.
    pub async fn start(options: WebhookOptions) -> anyhow::Result<Self> {
        let mut child = Command::new(binary("prefetch-webhook")?)
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--tls-cert-file")
            .arg(&options.cert_file)
            .arg("--tls-key-file")
            .arg(&options.key_file)
            .args(&options.extra_args)
            .env("KUBECONFIG", &options.kubeconfig)
            .env(
                "RUST_LOG",
                // The harness reads the "listening" line, an info event: never filter it out.
                std::env::var("PREFETCH_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting prefetch-webhook")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        let echo = options.echo_logs;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[webhook] {line}");
                }
                // Only the start-up lines are parsed: under load (the benchmark) this task
                // shares a thread with the load generator.
                if addr_tx.is_some()
                    && let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                    && entry["message"] == "prefetch-webhook listening"
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send((
                        entry["admission"].as_str().map(String::from),
                        entry["ops"].as_str().map(String::from),
                    ));
                }
                let mut logs = sink.lock().unwrap_or_else(|p| p.into_inner());
                if logs.len() == MAX_KEPT_LOG_LINES {
                    logs.pop_front();
                }
                logs.push_back(line);
            }
        });
        let (admission, ops) = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .context("prefetch-webhook did not report its addresses within 30 s")?
            .context("prefetch-webhook exited before listening")?;
        let parse = |s: Option<String>| -> anyhow::Result<SocketAddr> {
            Ok(s.context("address missing from log")?.parse()?)
        };
        let process = Self {
            child,
            admission_addr: parse(admission)?,
            ops_addr: parse(ops)?,
            logs,
        };
        process.wait_ready(Duration::from_secs(30)).await?;
        Ok(process)
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
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .context("did not exit after SIGTERM")??)
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
