//! Request-head handling: any bytes that httparse reads as a request head go through the
//! gateway's head checks and its forwarding-header rewrite without a panic, and what is
//! forwarded keeps the invariants the gateway promises (Host and framing headers survive any
//! `Connection` list, the gateway's X-Forwarded-* are its own, no hop-by-hop header is left).
#![no_main]
use fleetgate::forward_headers::{set_forwarded, strip_hop_by_hop};
use fleetgate::request_head::check;
use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let (Some(method), Some(path)) = (req.method, req.path) else { return };
    let mut builder = Request::builder().method(method).uri(path);
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) else {
            return;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();
    let chunked = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let _ = check(&parts, !chunked, Some(1024));
    let Ok(_) = check(&parts, !chunked, None) else { return };
    let host = parts.headers.get(http::header::HOST).cloned();
    let length = parts.headers.get(http::header::CONTENT_LENGTH).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    set_forwarded(&mut parts.headers, false, peer, peer, host.clone());
    assert_eq!(parts.headers.get(http::header::HOST), host.as_ref(), "Host survives");
    assert_eq!(parts.headers.get(http::header::CONTENT_LENGTH), length.as_ref(), "Content-Length survives");
    assert_eq!(parts.headers.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"192.0.2.7"[..]));
    for hop in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        assert!(!parts.headers.contains_key(hop), "{hop} forwarded");
    }
    for claim in ["forwarded", "x-real-ip"] {
        assert!(!parts.headers.contains_key(claim), "{claim} from an untrusted peer forwarded");
    }
});
