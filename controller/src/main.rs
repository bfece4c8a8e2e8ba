use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prefetch_controller::plan_command::{Objects, render};

/// kube-prefetch reconciler.
#[derive(Parser, Debug)]
#[command(name = "prefetch-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print which prefetch pods the reconciler would create on which nodes, for the
    /// Prefetches, Deployments and Nodes in YAML files (no cluster needed).
    Plan {
        /// A YAML file (multi-document and List kinds are fine); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Copy the bundled static `noop` binary to a path (the prefetch pods' init container).
    InstallNoop {
        /// Where the prefetch containers will find it.
        #[arg(long)]
        to: PathBuf,
        /// The bundled binary.
        #[arg(long, default_value = "/usr/local/bin/noop")]
        from: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Some(Command::Plan { files }) => {
            let mut objects = Objects::default();
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                objects.load(&file.display().to_string(), &text)?;
            }
            print!("{}", render(&objects));
            Ok(())
        }
        Some(Command::InstallNoop { to, from }) => {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        }
        None => anyhow::bail!(
            "running the reconciler is not implemented yet (issue 3 in progress); available now: `plan` and `install-noop`"
        ),
    }
}
