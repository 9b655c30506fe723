//! The public HTTP API. One module per group of routes; [`error`] is the
//! single place that turns failures into JSON.

pub mod bank;
pub mod body;
pub mod call;
pub mod cluster;
pub mod error;
