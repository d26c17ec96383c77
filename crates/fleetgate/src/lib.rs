//! # fleetgate
//!
//! The gateway: configuration in, a reverse proxy with fleet-wide rate and concurrency limits
//! out. The binary (`main.rs`) is a thin command line over [`run::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod affinity;
pub mod balance;
pub mod body;
pub mod build;
pub mod forward_headers;
pub mod gateway;
pub mod idle;
pub mod path_normalize;
pub mod pipeline;
pub mod request_head;
pub mod retry;
pub mod route;
pub mod run;
pub mod server;
pub mod target_choice;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;
pub mod upstream_pool;
