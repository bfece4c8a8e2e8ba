//! The webhook's decisions, pure: no kube client, no clock, no locks, no runtime. Each takes a
//! request body (and what the shell read from its watch caches, through the views of
//! [`facts`], and the time, as a value) and returns what to answer.
//!
//! From the leaves up: [`review`] reads AdmissionReviews (only the fields a decision uses,
//! borrowed from the body); [`answer`] is what is answered, its response body, and the
//! endpoint paths; [`facts`] is the data the decisions read besides the request, and the cache
//! views that hold it; [`lease`] says whether the controller leads. Then the decisions:
//! [`admission`] (Prefetch defaulting and validation, the workloads' rollout signal) and
//! [`gate`] (whether a rollout's pod is held with the scheduling gate). Beside them,
//! [`limits`] bounds client connections (stages, deadlines, which connection to shed).

pub mod admission;
pub mod answer;
pub mod facts;
pub mod gate;
pub mod lease;
pub mod limits;
pub mod review;
