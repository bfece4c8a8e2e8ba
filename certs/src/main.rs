//! `prefetch-certs`: issue (or keep) the webhook's CA and serving certificate.

use std::path::PathBuf;

use clap::Parser;
use prefetch_certs::{Action, CertRequest, ensure_certs, write_kustomize_inputs};

/// Creates a CA and a serving certificate for the prefetch webhook Service, if absent.
/// Re-running keeps the CA and renews the serving certificate only when needed.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory for ca.crt, ca.key, tls.crt and tls.key.
    #[arg(long, env = "PREFETCH_OUT", default_value = "certs")]
    out: PathBuf,
    /// Namespace of the webhook Service.
    #[arg(long, env = "PREFETCH_NAMESPACE", default_value = "prefetch-system")]
    namespace: String,
    /// Name of the webhook Service.
    #[arg(long, env = "PREFETCH_SERVICE", default_value = "prefetch-webhook")]
    service: String,
    /// Extra DNS name or IP address for the serving certificate (repeatable).
    #[arg(long = "san", env = "PREFETCH_SAN", value_delimiter = ',')]
    sans: Vec<String>,
    /// Replace the CA and serving certificate even if they are still good.
    #[arg(long, env = "PREFETCH_FORCE")]
    force: bool,
    /// Days the serving certificate is valid.
    #[arg(long, env = "PREFETCH_VALIDITY_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u16).range(2..))]
    validity_days: u16,
    /// Also copy tls.crt, tls.key and ca.crt (never ca.key) here for `kubectl apply -k`.
    #[arg(long, env = "PREFETCH_KUSTOMIZE_DIR")]
    kustomize_dir: Option<PathBuf>,
}

fn describe(what: &str, action: &Action) -> String {
    match action {
        Action::Created => format!("{what}: created"),
        Action::Kept => format!("{what}: kept (still valid)"),
        Action::Renewed(why) => format!("{what}: re-issued ({why})"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut req = CertRequest::new(&args.out, &args.namespace, &args.service);
    req.extra_sans = args.sans;
    req.force = args.force;
    req.leaf_validity = time::Duration::days(i64::from(args.validity_days));
    req.renew_before = req.renew_before.min(req.leaf_validity / 2);
    let outcome = ensure_certs(&req)?;
    println!(
        "{}",
        describe(
            &format!("CA            {}", args.out.join("ca.crt").display()),
            &outcome.ca
        )
    );
    println!(
        "{}",
        describe(
            &format!("serving cert  {}", args.out.join("tls.crt").display()),
            &outcome.leaf
        )
    );
    println!("names: {}", req.subject_alt_names().join(", "));
    if let Some(dir) = &args.kustomize_dir {
        write_kustomize_inputs(&args.out, dir)?;
        println!("kustomize inputs written to {}", dir.display());
    }
    Ok(())
}
