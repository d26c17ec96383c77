//! Certificate reload without a restart: every `tls.reload_interval` the certificate and key
//! files' modification times and sizes are compared with the last look; when one changed, the
//! whole set is read again and, if every pair is good, swapped in ([`CertStore::swap`]). A bad
//! new pair (unreadable, not PEM, key not matching) is logged and counted
//! (`fleetgate_tls_certificate_reloads_total{result="error"}`) and the old set keeps serving;
//! the files are read again at their next change. A pair written in two steps (certificate,
//! then key) may be refused once in between and loaded at the next look.

use super::{CertSet, CertStore};
use fleetgate_config::CertificatePair;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What a look at one file saw: modification time and size (`None`: not readable).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(pairs: &[CertificatePair]) -> Vec<Stamp> {
    pairs
        .iter()
        .flat_map(|p| [stamp(&p.cert_file), stamp(&p.key_file)])
        .collect()
}

/// Watches the files of `pairs` and swaps a changed, valid set into `store`, until the process
/// ends.
pub async fn watch(pairs: Vec<CertificatePair>, store: Arc<CertStore>, every: Duration) {
    let mut seen = stamps(&pairs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = stamps(&pairs);
        if now == seen {
            continue;
        }
        seen = now;
        // Reading and parsing a few PEM files: off the runtime's thread.
        let read = pairs.clone();
        let loaded = tokio::task::spawn_blocking(move || CertSet::load(&read))
            .await
            .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
        match loaded {
            Ok(set) => {
                store.swap(set);
                metrics::counter!(crate::telemetry::TLS_CERT_RELOADS, "result" => "ok").increment(1);
                tracing::info!(certificates = pairs.len(), "TLS certificates reloaded");
            }
            Err(why) => {
                metrics::counter!(crate::telemetry::TLS_CERT_RELOADS, "result" => "error").increment(1);
                tracing::warn!(error = %why, "TLS certificates changed but cannot be loaded; the previous ones keep serving");
            }
        }
    }
}
