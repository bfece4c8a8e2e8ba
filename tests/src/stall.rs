//! Clients that stall at one stage of a connection, as a hostile (or broken) client would, and
//! notice when the server cuts them off.

use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::tls_client::PinnedClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// TCP connected; the TLS handshake never starts.
    TlsHandshake,
    /// TLS done; no request is sent.
    NoRequest,
    /// The first request's headers arrive a line every 200 ms and never end.
    HeadersTrickled,
    /// The headers announce a body that never comes.
    BodyNeverSent,
    /// The body comes one byte a second.
    BodyTrickled,
    /// One request answered, then the kept-alive connection stays silent.
    IdleKeepAlive,
    /// One request answered, 1.5 s idle, then the next request's headers trickle in and
    /// never end.
    NextHeadersTrickled,
    /// HTTP/2 with a zero flow-control window: the answer can never be sent.
    ResponseNotRead,
}

impl Stall {
    pub const ALL: [Stall; 8] = [
        Stall::TlsHandshake,
        Stall::NoRequest,
        Stall::HeadersTrickled,
        Stall::BodyNeverSent,
        Stall::BodyTrickled,
        Stall::IdleKeepAlive,
        Stall::NextHeadersTrickled,
        Stall::ResponseNotRead,
    ];

    /// The webhook's name for the stage this client stalls in (its metrics' `stage` label).
    pub fn stage(self) -> &'static str {
        match self {
            Stall::TlsHandshake => "handshake",
            Stall::NoRequest | Stall::HeadersTrickled | Stall::NextHeadersTrickled => "headers",
            Stall::BodyNeverSent | Stall::BodyTrickled => "body",
            Stall::IdleKeepAlive => "idle",
            Stall::ResponseNotRead => "response",
        }
    }
}

/// A client stalled in its stage, watching for the server to close the connection.
pub struct Stalled {
    pub kind: Stall,
    /// When the stalled stage began, on the client's clock.
    pub stage_began: Instant,
    closed: JoinHandle<Instant>,
    /// What must stay alive for the stall to last (an unread HTTP/2 response).
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

impl Stalled {
    /// How long after its stage began the server closed the connection; an error if it is
    /// still open `within` that.
    pub async fn cut_off_after(self, within: Duration) -> anyhow::Result<Duration> {
        let kind = self.kind;
        let closed = tokio::time::timeout_at(self.stage_began + within, self.closed)
            .await
            .with_context(|| format!("{kind:?}: still open {within:?} after its stage began"))?
            .context("watcher task failed")?;
        Ok(closed - self.stage_began)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_finished()
    }
}

/// A request's head as bytes: `POST path` with a JSON body of `content_length` bytes.
pub fn request_head(client: &PinnedClient, path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
        client.host()
    )
}

/// Opens a connection to `client`'s server that stalls as `kind` says. `path` and `body` make
/// the requests (`body`: a valid review, for the kinds that need an answer).
pub async fn stall(
    client: &PinnedClient,
    kind: Stall,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Stalled> {
    let mut hold: Option<Box<dyn std::any::Any + Send>> = None;
    let (stage_began, closed) = match kind {
        Stall::TlsHandshake => {
            let mut tcp = TcpStream::connect(client.addr()).await?;
            let began = Instant::now();
            (
                began,
                tokio::spawn(async move {
                    let _ = tcp.read(&mut [0u8; 64]).await;
                    Instant::now()
                }),
            )
        }
        Stall::NoRequest => {
            let tls = client.connect_tls().await?;
            (Instant::now(), watch_close(tls, None))
        }
        Stall::HeadersTrickled => {
            let mut tls = client.connect_tls().await?;
            let began = Instant::now();
            let head = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", client.host());
            tls.write_all(head.as_bytes()).await?;
            (
                began,
                watch_close(tls, Some((Duration::from_millis(200), b"X-Stall: 1\r\n"))),
            )
        }
        Stall::BodyNeverSent | Stall::BodyTrickled => {
            let mut tls = client.connect_tls().await?;
            tls.write_all(request_head(client, path, 100_000).as_bytes())
                .await?;
            let trickle = (kind == Stall::BodyTrickled).then_some((Duration::from_secs(1), b" "));
            (
                Instant::now(),
                watch_close(tls, trickle.map(|(d, b)| (d, &b[..]))),
            )
        }
        Stall::IdleKeepAlive | Stall::NextHeadersTrickled => {
            let mut tls = client.connect_tls().await?;
            tls.write_all(request_head(client, path, body.len()).as_bytes())
                .await?;
            tls.write_all(body).await?;
            let (status, _) = read_http1_response(&mut tls).await?;
            if status != 200 {
                bail!("the keep-alive request got {status}");
            }
            if kind == Stall::IdleKeepAlive {
                (Instant::now(), watch_close(tls, None))
            } else {
                // A pause first (longer than the tests' headers bound): the connection is
                // idle, then owes headers.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let began = Instant::now();
                tls.write_all(format!("POST {path} HTTP/1.1\r\n").as_bytes())
                    .await?;
                let trickle = (Duration::from_millis(200), &b"X-Stall: 1\r\n"[..]);
                (began, watch_close(tls, Some(trickle)))
            }
        }
        Stall::ResponseNotRead => {
            let tls = client.connect_tls().await?;
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(0)
                    .handshake(TokioIo::new(tls))
                    .await?;
            let closed = tokio::spawn(async move {
                let _ = connection.await;
                Instant::now()
            });
            let request = http::Request::post(path)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::copy_from_slice(body)))?;
            // The headers of the answer arrive; its body cannot (the window is zero), and it
            // is never read.
            let response = sender.send_request(request).await?;
            let began = Instant::now();
            hold = Some(Box::new((sender, response)));
            (began, closed)
        }
    };
    Ok(Stalled {
        kind,
        stage_began,
        closed,
        _hold: hold,
    })
}

/// Waits for the server to close `stream` (EOF or an error), writing `trickle`'s bytes at its
/// interval meanwhile.
fn watch_close<S>(stream: S, trickle: Option<(Duration, &'static [u8])>) -> JoinHandle<Instant>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    tokio::spawn(async move {
        let (mut read, mut write) = tokio::io::split(stream);
        let reader = async {
            let mut buf = [0u8; 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let writer = async {
            match trickle {
                Some((every, bytes)) => loop {
                    tokio::time::sleep(every).await;
                    if write.write_all(bytes).await.is_err() {
                        // Closed: the reader sees it too.
                        std::future::pending::<()>().await;
                    }
                },
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
        }
        Instant::now()
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body: (status, body).
pub async fn read_http1_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the response headers");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the response body ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + length].to_vec()))
}
