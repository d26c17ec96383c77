//! Upgrade pass-through (WebSocket and other `Upgrade` protocols over HTTP/1.1).
//!
//! The upgrade request goes through the route's pipeline once, like any request (a rate limit
//! counts it once). The gateway forwards `Upgrade` and `Connection: upgrade` to the upstream on
//! a connection of its own; on 101 it passes the 101 to the client and joins the two upgraded
//! connections byte for byte. The request's guards (concurrency permits) are held until the
//! tunnel closes. An upstream that answers anything but 101 has its answer passed on as is.
//!
//! Bounds: a tunnel that moves no byte either way for its idle bound (`server.idle_timeout`)
//! is closed; writes to a peer that does not read fail after the write timeouts of the
//! connections underneath (the client's and the upstream's [`crate::idle::WriteBound`]).
//!
//! `Upgrade: h2c` is never passed on: a tunnel would carry requests the gateway never sees
//! (no routing, no limits). Such a request is proxied as a plain HTTP/1.1 request.

use fleetgate_http::context::Guard;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The protocol an HTTP/1.1 request asks to upgrade to, if it asks for one the gateway passes
/// on: `Upgrade` present and `Connection` naming `upgrade`, and not `h2c`.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = upgrade
        .to_str()
        .map(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        .unwrap_or(true);
    (connection_says_upgrade && !h2c).then(|| upgrade.clone())
}

/// Puts the upgrade headers back (after the hop-by-hop ones were removed).
pub fn restore_headers(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Both sides of a switched connection, before they are joined.
pub struct Tunnel {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
}

impl Tunnel {
    /// Joins the two sides until either closes or nothing moves for `idle`; `guards` are held
    /// until then.
    pub async fn run(self, guards: Vec<Guard>, idle: Duration) {
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(both) => both,
            Err(e) => {
                crate::telemetry::upgrade("failed");
                tracing::info!(error = %e, "upgrade failed: a side of the tunnel did not switch");
                return;
            }
        };
        crate::telemetry::upgrade("opened");
        let open = metrics::gauge!(crate::telemetry::UPGRADES_OPEN);
        open.increment(1.0);
        let moved = Arc::new(AtomicBool::new(false));
        let mut client = Active::new(TokioIo::new(client), moved.clone());
        let mut upstream = Active::new(TokioIo::new(upstream), moved.clone());
        let idle_watch = async {
            loop {
                tokio::time::sleep(idle).await;
                if !moved.swap(false, Ordering::Relaxed) {
                    return;
                }
            }
        };
        tokio::select! {
            done = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match done {
                Ok((up, down)) => tracing::debug!(to_upstream = up, to_client = down, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
            },
            _ = idle_watch => {
                tracing::debug!(idle_ms = idle.as_millis() as u64, "tunnel closed: idle");
            }
        }
        open.decrement(1.0);
        drop(guards);
    }
}

pin_project_lite::pin_project! {
    /// A stream that notes when bytes are read from it (the tunnel's idle watch).
    struct Active<T> {
        #[pin]
        inner: T,
        moved: Arc<AtomicBool>,
    }
}

impl<T> Active<T> {
    fn new(inner: T, moved: Arc<AtomicBool>) -> Self {
        Active { inner, moved }
    }
}

impl<T: AsyncRead> AsyncRead for Active<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Active<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_never_h2c() {
        let ws = map(&[("upgrade", "websocket"), ("connection", "keep-alive, Upgrade")]);
        assert_eq!(requested(&ws).unwrap(), "websocket");
        assert!(
            requested(&map(&[("upgrade", "websocket")])).is_none(),
            "Connection must say upgrade"
        );
        assert!(
            requested(&map(&[("connection", "upgrade")])).is_none(),
            "no protocol named"
        );
        let h2c = map(&[("upgrade", "h2c"), ("connection", "Upgrade, HTTP2-Settings")]);
        assert!(requested(&h2c).is_none(), "h2c would tunnel requests past the gateway");
        let both = map(&[("upgrade", "websocket, H2C"), ("connection", "upgrade")]);
        assert!(requested(&both).is_none());
    }
}
