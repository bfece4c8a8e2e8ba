//! The flags naming the controller's leader Lease, shared by both binaries: the controller
//! holds the Lease they name, the webhook reads it (its pod gate gates only while the Lease is
//! fresh), so both must name the same one by the same flags and defaults.
//!
//! Only the name is shared. Whether to elect (`--leader-elect`) and under which identity
//! (`--identity`) concern the holder alone and stay in the controller's flags. The help
//! texts here are the controller's; the webhook words them for its reading of the Lease
//! (`mut_arg` in its flags).

use prefetch_common::annotations::{DEFAULT_LEASE_NAME, DEFAULT_LEASE_NAMESPACE};

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LeaseArgs {
    /// Namespace of the leader election Lease.
    #[arg(long, env = "PREFETCH_LEASE_NAMESPACE", default_value = DEFAULT_LEASE_NAMESPACE)]
    pub lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(long, env = "PREFETCH_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,
}
