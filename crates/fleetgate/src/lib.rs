//! # fleetgate
//!
//! The gateway: configuration in, a reverse proxy with fleet-wide rate and concurrency limits
//! out. The binary (`main.rs`) is a thin command line over [`run::run`].
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod admin_auth;
pub mod admin_events;
pub mod affinity;
pub mod auth_client;
pub mod balance;
pub mod body;
mod boxed_future;
pub mod build;
pub mod cache_refresh;
pub mod client_body;
pub mod correlation;
pub mod dashboard;
pub mod facilitator;
pub mod forward_headers;
pub mod gateway;
pub mod idle;
pub mod otlp;
pub mod path_normalize;
pub mod pipeline;
pub mod reload;
pub mod request_head;
pub mod retry;
pub mod route;
pub mod run;
pub mod server;
pub mod target_choice;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod upstream_login;
pub mod upstream_pool;
pub mod upstream_side;
