//! # fleetgate-config
//!
//! The gateway's configuration: read a YAML file, substitute `${VAR}` and `${VAR:-default}` from
//! the environment, parse it (refusing unknown fields), validate it, and apply the `REDIS_URL`
//! override. The result is a [`Config`] whose every value has been checked and defaulted.
//!
//! * [`load`]: from a file. [`parse`]: from text. [`parse_with_env`]: with an explicit
//!   environment (tests, embedding).
//! * Every failure is one [`ConfigError`] naming the file, line and column, the field path
//!   (e.g. `routes[0].rate_limits[1].rate`), why, and what is accepted.
//! * Nothing panics on any input.
//!
//! ## Environment
//! * `${NAME}` is replaced by the variable's value; an unset variable is an error naming it and
//!   the line. `${NAME:-default}` gives `default` when NAME is unset or empty. `$${` is a literal
//!   `${`. Substitution is textual, before YAML parsing, and skips `#` comments; quote the
//!   reference (`"${NAME}"`) when a value may hold YAML-special characters.
//! * `REDIS_URL`, when set and not empty, overrides `store.url` (after the file is validated;
//!   its URL is checked the same way, and errors name `REDIS_URL`), and so the URL of every
//!   concern under `stores` that has no `url` of its own.
//!
//! ## Stores
//! [`Config::store`] is the store; [`Config::stores`] holds each concern's store fully
//! resolved (`stores.NAME` over `store`: own `url`, `key_prefix`, `timeout_ms`,
//! `default_ttl_ms`; credentials, TLS, breaker, pool and reconnect settings shared).
//! [`StoreConfig::redis_options`] gives the driver every setting. TLS files are checked (exist,
//! readable, PEM) during validation.
//!
//! ## Secrets
//! Passwords (in store URLs, `password`, `sentinel_password`) never appear in a
//! [`ConfigError`] (messages and the printed line of the file) nor in the `Debug` form of
//! [`Config`] and [`StoreConfig`].
//!
//! ## One type tree
//! The file deserializes straight into [`Config`] and its sections' types, each refusing its
//! own bad values and unknown fields; validation (validate.rs) then checks what spans
//! fields or sections and fills in the few resolved fields (`#[serde(skip)]`:
//! [`Config::stores`], [`UpstreamConfig::name`], [`RouteConfig::target`]). So a new section
//! is one field: in [`RouteConfig`] for a route-level concern, in [`Config`] for a top-level
//! one, with `#[serde(default, deserialize_with = "nullable")]` and a type that deserializes
//! itself (a concern's lives beside it in `fleetgate-http`); validate.rs changes only for a
//! cross-field check, and `docs/configuration.md` documents the field. No `#[serde(flatten)]`:
//! it would disable `deny_unknown_fields`.
//!
//! The file format is described in `docs/configuration.md`.
#![forbid(unsafe_code)]

mod duration;
mod env;
mod error;
mod fields;
mod listener_tls;
mod locate;
mod model;
mod rewrite;
mod route;
mod route_match;
mod snippet;
mod store;
mod store_url;
mod telemetry;
mod tls;
mod upstream;
mod upstream_policy;
mod upstream_tls;
mod validate;

pub use error::{ConfigError, ErrorKind};
pub use ipnet::IpNet;
pub use model::*;

use error::Source;
use std::ffi::OsString;
use std::path::Path;

/// Largest configuration file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Reads, substitutes, parses and validates the configuration file at `path`, using the
/// process environment for `${VAR}` and `REDIS_URL`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ConfigError::io(&file, &e))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
            let source = Source {
                file: &file,
                original: "",
                columns: Default::default(),
            };
            return Err(source.error_at_original(
                ErrorKind::Syntax,
                u32::try_from(line).unwrap_or(u32::MAX),
                0,
                "the file is not valid UTF-8; accepted: a UTF-8 text file".to_string(),
            ));
        }
    };
    parse(&text, &file)
}

/// Substitutes, parses and validates configuration `text`; `file_name` is used in errors. Uses
/// the process environment for `${VAR}` and `REDIS_URL`.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, file_name, &|name| std::env::var_os(name))
}

/// [`parse`] with an explicit environment: `env(NAME)` gives the variable's value, or `None`
/// when unset. Used for `${VAR}` substitution and for `REDIS_URL`.
pub fn parse_with_env(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Config, ConfigError> {
    let mut source = Source {
        file: file_name,
        original: text,
        columns: Default::default(),
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(source.error(
            ErrorKind::Syntax,
            0,
            0,
            None,
            format!(
                "the file is {} bytes; accepted: at most {MAX_FILE_BYTES} bytes",
                text.len()
            ),
        ));
    }
    let (substituted, columns) = env::substitute(text, env)
        .map_err(|e| source.error_at_original(ErrorKind::Env, e.line, e.column, e.message))?;
    source.columns = columns;

    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut path = None;
    let loc = locate::Locator::new(&substituted, options.clone());
    let file: Config = serde_saphyr::with_deserializer_from_str_with_options(&substituted, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().clone());
            e.into_inner()
        })
    })
    .map_err(|e| match loc.syntax_error().filter(|_| error::is_refusal(&e)) {
        // A refused value is read before the rest of the file: a syntax error anywhere
        // comes first, as the text must be YAML before its values mean anything.
        Some(syntax) => source.yaml_error(syntax, None, &loc),
        None => source.yaml_error(&e, path.as_ref(), &loc),
    })?;

    let redis_url = env("REDIS_URL")
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty());
    validate::validate(file, redis_url.as_deref(), &loc).map_err(|inv| source.invalid(inv, &loc))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_upstream_side;
