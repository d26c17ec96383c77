mod config;
pub use config::ConcurrencyLimitConfig;
