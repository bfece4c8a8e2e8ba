//! prefetch-controller's pure core: which nodes a Prefetch targets (and why others are
//! skipped), which images each still needs, and the prefetch pod for a node. The reconciler
//! around it (issue 3, in progress) only moves these decisions to and from the API server.

pub mod config;
pub mod eligibility;
pub mod fulllist;
pub mod gate;
pub mod gate_loop;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod naming;
pub mod outcome;
pub mod plan;
pub mod plan_command;
pub mod pod;
pub mod ratelimit;
pub mod reconciler;
pub mod records;
pub mod round;
pub mod status_patch;
pub mod warmer;
pub mod warmup;
