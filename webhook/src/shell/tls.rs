//! Serving certificate from files, reloaded when they change.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which per-file inotify
//! watches miss; so the files are polled (a few hundred bytes each) and compared by content.
//! New handshakes get the new certificate; connections already open keep theirs, so no
//! request fails during a rotation. A pair that does not load (half-written, key and
//! certificate mismatched) is skipped and retried: the old certificate stays in service.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::shell::metrics::{Metrics, ReasonLabel};
use prefetch_shell::locks;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: not a PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{cert} and {key} do not form a usable pair: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate and key files, and what they held when last loaded.
pub struct CertFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl CertFiles {
    fn read_raw(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert_path)?, read(&self.key_path)?))
    }

    fn parse(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: self.cert_path.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert_path.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
            path: self.key_path.clone(),
            reason: e.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Hands every new TLS handshake the current certificate.
pub struct ReloadingCert {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.files.cert_path)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = locks::read(&self.current);
        Some(guard.0.clone())
    }
}

/// What a reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
}

impl ReloadingCert {
    /// Loads the pair now; a server must not start without a usable certificate.
    pub fn load(files: CertFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = files.read_raw()?;
        let certified = files.parse(&cert_pem, &key_pem, &provider)?;
        Ok(Self {
            files,
            provider,
            current: RwLock::new((Arc::new(certified), cert_pem, key_pem)),
        })
    }

    /// Re-reads the files; swaps the certificate in when they changed and form a valid pair.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (cert_pem, key_pem) = self.files.read_raw()?;
        {
            let guard = locks::read(&self.current);
            if guard.1 == cert_pem && guard.2 == key_pem {
                return Ok(Reload::Unchanged);
            }
        }
        let certified = self.files.parse(&cert_pem, &key_pem, &self.provider)?;
        let mut guard = locks::write(&self.current);
        *guard = (Arc::new(certified), cert_pem, key_pem);
        Ok(Reload::Reloaded)
    }

    /// DER of the leaf certificate in service.
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        let guard = locks::read(&self.current);
        guard.0.cert.first().cloned()
    }
}

/// A rustls server config: TLS 1.2+, HTTP/2 and HTTP/1.1 by ALPN, certificate from `cert`.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Polls the certificate files every `interval` until `shutdown`.
pub async fn watch_cert_files(
    cert: Arc<ReloadingCert>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let cert = cert.clone();
        let outcome = tokio::task::spawn_blocking(move || cert.reload()).await;
        match outcome {
            Ok(Ok(Reload::Unchanged)) => last_error = None,
            Ok(Ok(Reload::Reloaded)) => {
                last_error = None;
                metrics
                    .cert_reloads
                    .get_or_create(&ReasonLabel { reason: "success" })
                    .inc();
                tracing::info!("serving certificate reloaded; new connections use it");
            }
            Ok(Err(err)) => {
                metrics
                    .cert_reloads
                    .get_or_create(&ReasonLabel { reason: "failure" })
                    .inc();
                let text = err.to_string();
                // A rotation in progress may fail once; repeat the same complaint only at debug.
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(error = %text, "certificate files changed but do not load; keeping the current certificate");
                } else {
                    tracing::debug!(error = %text, "certificate files still do not load");
                }
                last_error = Some(text);
            }
            Err(join) => tracing::error!(error = %join, "certificate reload task failed"),
        }
    }
}
