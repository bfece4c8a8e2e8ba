//! Certificate bootstrap for the webhook (`make certs`): a CA and a serving certificate for
//! the webhook Service, made with rcgen. Idempotent: an existing CA is kept, and the serving
//! certificate is only re-issued when it nears expiry, names other hosts, or was issued by
//! another CA. Files are replaced atomically so a running webhook never reads half a file.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

const CA_VALIDITY: Duration = Duration::days(3650);
const CA_COMMON_NAME: &str = "kube-prefetch webhook CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{present} exists but {missing} does not; restore it or pass --force to start over")]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What to issue, and where.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub out_dir: PathBuf,
    pub namespace: String,
    pub service: String,
    /// Extra DNS names or IP addresses for the serving certificate (e.g. `127.0.0.1`).
    pub extra_sans: Vec<String>,
    /// Replace the CA and the serving certificate even when they are still good.
    pub force: bool,
    pub leaf_validity: Duration,
    /// Re-issue the serving certificate when it expires sooner than this.
    pub renew_before: Duration,
}

impl CertRequest {
    pub fn new(out_dir: impl Into<PathBuf>, namespace: &str, service: &str) -> Self {
        Self {
            out_dir: out_dir.into(),
            namespace: namespace.to_string(),
            service: service.to_string(),
            extra_sans: Vec::new(),
            force: false,
            leaf_validity: Duration::days(365),
            renew_before: Duration::days(30),
        }
    }

    /// Every name the API server may use for the Service, plus the extra SANs.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        let mut names = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ];
        for extra in &self.extra_sans {
            if !names.contains(extra) {
                names.push(extra.clone());
            }
        }
        names
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Created,
    Kept,
    Renewed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ca: Action,
    pub leaf: Action,
}

pub fn ensure_certs(req: &CertRequest) -> Result<Outcome, CertError> {
    let dir = &req.out_dir;
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.clone(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let (ca_cert_pem, ca_key, ca_action) = ensure_ca(req, now)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(|e| {
        invalid(
            &dir.join(CA_CERT),
            format!("not a usable CA certificate: {e}"),
        )
    })?;

    let wanted_sans = req.subject_alt_names();
    let leaf_action = match leaf_renewal_reason(req, &ca_cert_pem, &wanted_sans, now, &ca_action)? {
        None => Action::Kept,
        Some(reason) => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(wanted_sans)?;
            params.distinguished_name = name(&format!("{}.{}.svc", req.service, req.namespace));
            params.not_before = now - Duration::minutes(5);
            params.not_after = now + req.leaf_validity;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            // Key first: a watcher that sees the new certificate must find its key already there.
            write_atomic(&dir.join(TLS_KEY), key.serialize_pem().as_bytes(), true)?;
            write_atomic(&dir.join(TLS_CERT), cert.pem().as_bytes(), false)?;
            reason
        }
    };
    Ok(Outcome {
        ca: ca_action,
        leaf: leaf_action,
    })
}

fn ensure_ca(
    req: &CertRequest,
    now: OffsetDateTime,
) -> Result<(String, KeyPair, Action), CertError> {
    let (cert_path, key_path) = (req.out_dir.join(CA_CERT), req.out_dir.join(CA_KEY));
    if !req.force {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = read(&cert_path)?;
                let key = KeyPair::from_pem(&read(&key_path)?)
                    .map_err(|e| invalid(&key_path, format!("not a PEM private key: {e}")))?;
                let der = pem_der(&cert_path, &cert_pem)?;
                let (_, x509) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| invalid(&cert_path, format!("not an X.509 certificate: {e}")))?;
                if x509.public_key().raw != key.subject_public_key_info().as_slice() {
                    return Err(invalid(
                        &key_path,
                        format!("does not belong to {}", cert_path.display()),
                    ));
                }
                if x509.validity().not_after.timestamp() > (now + req.renew_before).unix_timestamp()
                {
                    return Ok((cert_pem, key, Action::Kept));
                }
                return Err(invalid(
                    &cert_path,
                    "the CA expires within the renewal window; re-run with --force to replace it \
                     (clients must then trust the new ca.crt)"
                        .into(),
                ));
            }
            (true, false) => {
                return Err(CertError::HalfPair {
                    present: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(CertError::HalfPair {
                    present: key_path,
                    missing: cert_path,
                });
            }
            (false, false) => {}
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    let action = if req.force {
        Action::Renewed("--force".into())
    } else {
        Action::Created
    };
    Ok((cert.pem(), key, action))
}

/// Why the serving certificate must be (re-)issued, or `None` to keep it.
fn leaf_renewal_reason(
    req: &CertRequest,
    ca_cert_pem: &str,
    wanted_sans: &[String],
    now: OffsetDateTime,
    ca_action: &Action,
) -> Result<Option<Action>, CertError> {
    let (cert_path, key_path) = (req.out_dir.join(TLS_CERT), req.out_dir.join(TLS_KEY));
    if req.force {
        return Ok(Some(Action::Renewed("--force".into())));
    }
    if *ca_action != Action::Kept {
        return Ok(Some(if cert_path.exists() {
            Action::Renewed("new CA".into())
        } else {
            Action::Created
        }));
    }
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => return Ok(Some(Action::Created)),
        (true, false) | (false, true) => {
            return Ok(Some(Action::Renewed("incomplete key pair".into())));
        }
        (true, true) => {}
    }
    let pem = read(&cert_path)?;
    let der = pem_der(&cert_path, &pem)?;
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&der) else {
        return Ok(Some(Action::Renewed("unreadable certificate".into())));
    };
    let ca_der = pem_der(&req.out_dir.join(CA_CERT), ca_cert_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| invalid(&req.out_dir.join(CA_CERT), e.to_string()))?;
    if leaf.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(Some(Action::Renewed("issued by another CA".into())));
    }
    let key_matches = KeyPair::from_pem(&read(&key_path)?)
        .is_ok_and(|key| key.subject_public_key_info().as_slice() == leaf.public_key().raw);
    if !key_matches {
        return Ok(Some(Action::Renewed(
            "tls.key does not match tls.crt".into(),
        )));
    }
    if leaf.validity().not_after.timestamp() <= (now + req.renew_before).unix_timestamp() {
        return Ok(Some(Action::Renewed("near expiry".into())));
    }
    let have: BTreeSet<String> = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(general_name_text)
            .collect(),
        _ => BTreeSet::new(),
    };
    let want: BTreeSet<String> = wanted_sans.iter().map(|s| canonical_san(s)).collect();
    if have != want {
        return Ok(Some(Action::Renewed(
            "subject alternative names changed".into(),
        )));
    }
    Ok(None)
}

fn general_name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn canonical_san(s: &str) -> String {
    s.parse::<IpAddr>()
        .map_or_else(|_| s.to_string(), |ip| ip.to_string())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "kube-prefetch");
    dn
}

fn invalid(path: &Path, reason: String) -> CertError {
    CertError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_der(path: &Path, pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid(path, format!("not PEM: {e}")))?;
    Ok(parsed.contents)
}

/// Write to a temporary file beside `path`, then rename over it: readers see the old file or
/// the new one, never a torn write. Private keys are created mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Copies what `kubectl apply -k manifests/` needs (the serving pair and the CA bundle, never
/// the CA key) into the kustomize input directory.
pub fn write_kustomize_inputs(cert_dir: &Path, kustomize_dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(kustomize_dir).map_err(|source| CertError::Io {
        path: kustomize_dir.to_path_buf(),
        source,
    })?;
    for (file, private) in [(TLS_KEY, true), (TLS_CERT, false), (CA_CERT, false)] {
        let contents = fs::read(cert_dir.join(file)).map_err(|source| CertError::Io {
            path: cert_dir.join(file),
            source,
        })?;
        write_atomic(&kustomize_dir.join(file), &contents, private)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("prefetch-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn request(dir: &Path) -> CertRequest {
        let mut req = CertRequest::new(dir, "prefetch-system", "prefetch-webhook");
        req.extra_sans = vec!["127.0.0.1".into(), "localhost".into()];
        req
    }

    fn leaf_sans(dir: &Path) -> BTreeSet<String> {
        let der = pem_der(dir, &fs::read_to_string(dir.join(TLS_CERT)).unwrap()).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = leaf.subject_alternative_name().unwrap().unwrap();
        ext.value
            .general_names
            .iter()
            .filter_map(general_name_text)
            .collect()
    }

    #[test]
    fn creates_then_keeps() {
        let dir = tempdir("idempotent");
        let req = request(&dir);
        assert_eq!(
            ensure_certs(&req).unwrap(),
            Outcome {
                ca: Action::Created,
                leaf: Action::Created
            }
        );
        let before: Vec<Vec<u8>> = [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();
        assert_eq!(
            ensure_certs(&req).unwrap(),
            Outcome {
                ca: Action::Kept,
                leaf: Action::Kept
            }
        );
        let after: Vec<Vec<u8>> = [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect();
        assert_eq!(before, after, "a second run must not touch good files");
        let want: BTreeSet<String> = [
            "prefetch-webhook",
            "prefetch-webhook.prefetch-system",
            "prefetch-webhook.prefetch-system.svc",
            "prefetch-webhook.prefetch-system.svc.cluster.local",
            "127.0.0.1",
            "localhost",
        ]
        .map(String::from)
        .into();
        assert_eq!(leaf_sans(&dir), want);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(CA_KEY)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "ca.key must not be readable by others");
        }
    }

    #[test]
    fn renews_the_leaf_but_keeps_the_ca() {
        let dir = tempdir("renew");
        let mut req = request(&dir);
        ensure_certs(&req).unwrap();
        let ca = fs::read(dir.join(CA_CERT)).unwrap();

        req.extra_sans.push("webhook.example.com".into());
        let out = ensure_certs(&req).unwrap();
        assert_eq!(
            out,
            Outcome {
                ca: Action::Kept,
                leaf: Action::Renewed("subject alternative names changed".into())
            }
        );
        assert!(leaf_sans(&dir).contains("webhook.example.com"));

        req.renew_before = Duration::days(400);
        assert_eq!(
            ensure_certs(&req).unwrap().leaf,
            Action::Renewed("near expiry".into())
        );
        assert_eq!(fs::read(dir.join(CA_CERT)).unwrap(), ca);
    }

    #[test]
    fn reissues_a_leaf_from_another_ca() {
        let (a, b) = (tempdir("ca-a"), tempdir("ca-b"));
        ensure_certs(&request(&a)).unwrap();
        ensure_certs(&request(&b)).unwrap();
        fs::copy(b.join(TLS_CERT), a.join(TLS_CERT)).unwrap();
        fs::copy(b.join(TLS_KEY), a.join(TLS_KEY)).unwrap();
        assert_eq!(
            ensure_certs(&request(&a)).unwrap().leaf,
            Action::Renewed("issued by another CA".into())
        );
    }

    #[test]
    fn refuses_half_a_ca_and_force_replaces_all() {
        let dir = tempdir("half");
        ensure_certs(&request(&dir)).unwrap();
        let ca = fs::read(dir.join(CA_CERT)).unwrap();
        fs::remove_file(dir.join(CA_KEY)).unwrap();
        let err = ensure_certs(&request(&dir)).unwrap_err();
        assert!(matches!(err, CertError::HalfPair { .. }), "{err}");
        let mut req = request(&dir);
        req.force = true;
        assert_eq!(
            ensure_certs(&req).unwrap().ca,
            Action::Renewed("--force".into())
        );
        assert_ne!(fs::read(dir.join(CA_CERT)).unwrap(), ca);
    }

    #[test]
    fn mismatched_key_is_replaced() {
        let dir = tempdir("mismatch");
        ensure_certs(&request(&dir)).unwrap();
        fs::write(
            dir.join(TLS_KEY),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert_eq!(
            ensure_certs(&request(&dir)).unwrap().leaf,
            Action::Renewed("tls.key does not match tls.crt".into())
        );
    }

    #[test]
    fn kustomize_inputs_never_include_the_ca_key() {
        let dir = tempdir("kustomize");
        ensure_certs(&request(&dir)).unwrap();
        let out = dir.join("kustomize");
        write_kustomize_inputs(&dir, &out).unwrap();
        assert!(
            out.join(TLS_CERT).exists() && out.join(TLS_KEY).exists() && out.join(CA_CERT).exists()
        );
        assert!(!out.join(CA_KEY).exists());
    }
}
