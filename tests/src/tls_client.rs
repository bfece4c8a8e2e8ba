//! An HTTPS client that trusts only the given CA, as the API server trusts a webhook's
//! caBundle, and exposes the certificate the server presented.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Clone)]
pub struct PinnedClient {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: String,
    /// Idle connections [`Self::post_keep_alive`] reuses, shared by the clones.
    idle: Arc<std::sync::Mutex<Vec<Connection>>>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One kept-alive connection.
pub struct Connection {
    sender: Sender,
    host: String,
    /// The leaf certificate the server presented in the handshake.
    pub peer_certificate: CertificateDer<'static>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response is not JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Installs ring as the process-wide rustls backend (once per test process).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl PinnedClient {
    /// Trusts only `ca_pem`; verifies the server as `server_name` (a DNS name or IP).
    pub fn new(
        ca_pem: &[u8],
        addr: SocketAddr,
        server_name: &str,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("reading the CA bundle")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::Http2 => b"h2".to_vec(),
        }];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
            server_name: ServerName::try_from(server_name.to_string())?,
            host: format!("{server_name}:{}", addr.port()),
            idle: Arc::default(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `Host` header value for this server.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A TLS connection with no HTTP on it yet.
    pub async fn connect_tls(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")
    }

    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let tls = self.connect_tls().await?;
        let (_, session) = tls.get_ref();
        let peer_certificate = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .cloned()
            .context("server presented no certificate")?;
        let h2 = session.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let sender = if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Connection {
            sender,
            host: self.host.clone(),
            peer_certificate,
        })
    }

    /// One request on a fresh connection.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.connect().await?.post(path, content_type, body).await
    }
}

impl PinnedClient {
    /// A POST over a kept-alive connection, as kube-apiserver calls webhooks (client-go's
    /// transport keeps connections to a webhook open and reuses them): an idle connection of
    /// an earlier call if there is one, else a new one; kept for the next call once answered.
    /// A reused connection the server closed meanwhile fails before anything is answered, and
    /// the request goes once more over a new one (as Go's transport retries a request on a
    /// connection that turned out dead).
    pub async fn post_keep_alive(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let reused = loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(conn) if conn.is_closed() => continue,
                other => break other,
            }
        };
        let (conn, reply) = match reused {
            Some(mut conn) => match conn.post(path, content_type, body.clone()).await {
                Ok(reply) => (conn, reply),
                Err(_) => {
                    let mut fresh = self.connect().await?;
                    let reply = fresh.post(path, content_type, body).await?;
                    (fresh, reply)
                }
            },
            None => {
                let mut fresh = self.connect().await?;
                let reply = fresh.post(path, content_type, body).await?;
                (fresh, reply)
            }
        };
        if !conn.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
        Ok(reply)
    }
}

impl Connection {
    /// Whether the server (or the network) has closed this connection.
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(sender) => sender.is_closed(),
            Sender::H2(sender) => sender.is_closed(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let request = Request::post(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(body.into()))?;
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }
}
