//! # fleetgate
//!
//! The gateway: configuration in, a reverse proxy with fleet-wide rate and concurrency limits
//! out. The binary (`main.rs`) is a thin command line over [`run::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod build;
pub mod client_ip;
pub mod fleet;
pub mod forward_headers;
pub mod gateway;
pub mod identity;
pub mod idle;
pub mod layer;
pub mod path_normalize;
pub mod policy;
pub mod ratelimit_headers;
pub mod request_head;
pub mod route;
pub mod run;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod upstream_pool;
