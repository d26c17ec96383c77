mod config;
pub use config::RateLimitConfig;
