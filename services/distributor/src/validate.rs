//! Validation of a whole push: the shared checks of [`norn_model::validation`] with the
//! tenant's limits ([`norn_limits::Limits::validation`]). The ingester's gRPC `Push` runs the
//! same [`check_batch`], so what one accepts the other does.

pub use norn_model::validation::{Checked, check_batch};
