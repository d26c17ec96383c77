//! `fleetgate-bench bare-proxy LISTEN UPSTREAM [WORKERS]`: the leanest proxy shape on tokio,
//! with no hyper, as a floor for what a Rust data path costs here (docs/architecture.md, "Where
//! the time goes"). Not a gateway: it has no limits and no header edits, reads only GETs without
//! a body and answers with Content-Length, and keeps one upstream connection per client
//! connection. Its layout matches fleetgate's: one current-thread runtime per worker, each
//! with its own SO_REUSEPORT listener. Measure it like the proxies of `scripts/bench gateway`,
//! e.g. `wrk -t2 -c64 -d5s http://LISTEN/` with its CPU time read from /proc.

use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn run(listen: SocketAddr, upstream: SocketAddr, workers: usize) -> ExitCode {
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let listener = match reuseport_listener(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare-proxy: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        threads.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("build a current-thread runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    tokio::spawn(serve(client, upstream));
                }
            })
        }));
    }
    eprintln!("bare-proxy: {listen} -> {upstream}, {} worker(s)", threads.len());
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Relays requests and answers, one at a time, until either side closes or sends something
/// this floor does not handle.
async fn serve(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut request, mut answer) = (vec![0u8; 8192], vec![0u8; 8192]);
    while let Some(n) = read_message(&mut client, &mut request, Kind::Request).await {
        if up.write_all(&request[..n]).await.is_err() {
            return;
        }
        let Some(m) = read_message(&mut up, &mut answer, Kind::Response).await else {
            return;
        };
        if client.write_all(&answer[..m]).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Request,
    Response,
}

/// Reads one message (head and Content-Length body) into the start of `buf`; its length.
/// `None` at EOF, on an error, on a malformed head, or when bytes follow the message (a
/// pipelined request), which this floor does not handle.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>, kind: Kind) -> Option<usize> {
    let mut filled = 0;
    loop {
        if filled > 0 {
            if let Some((head, body)) = parse(&buf[..filled], kind)? {
                if filled == head + body {
                    return Some(filled);
                }
                if filled > head + body {
                    return None;
                }
            }
        }
        if filled == buf.len() {
            if buf.len() >= 1 << 20 {
                return None;
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
    }
}

/// `Some(None)`: incomplete; `Some(Some((head, body)))`: head length and Content-Length;
/// `None`: malformed.
fn parse(bytes: &[u8], kind: Kind) -> Option<Option<(usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let status = match kind {
        Kind::Request => httparse::Request::new(&mut headers).parse(bytes).ok()?,
        Kind::Response => httparse::Response::new(&mut headers).parse(bytes).ok()?,
    };
    let httparse::Status::Complete(head) = status else {
        return Some(None);
    };
    let length = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(Some(0))?;
    Some(Some((head, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_finds_the_head_and_the_content_length() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse(answer, Kind::Response), Some(Some((38, 2))));
        assert_eq!(parse(&answer[..20], Kind::Response), Some(None), "incomplete");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Kind::Request),
            Some(Some((27, 0)))
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", Kind::Request),
            None
        );
        assert_eq!(parse(b"\x01\x02 nonsense\r\n\r\n", Kind::Request), None);
    }
}
