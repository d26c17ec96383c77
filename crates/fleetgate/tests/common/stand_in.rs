//! A stand-in HTTP/1 server for a third party the tests play (an origin, an auth service, a
//! slow upstream): on a free loopback port, on a thread and runtime of its own, answering
//! every request with the test's `answer`; it stops when dropped.

use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;

pub struct StandIn {
    pub port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StandIn {
    pub fn start<F, Fut, B>(answer: F) -> StandIn
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        StandIn::on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), answer)
    }

    /// Like [`start`](Self::start), on a listener the caller bound (a given port).
    pub fn on<F, Fut, B>(listener: std::net::TcpListener, answer: F) -> StandIn
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let answer = answer.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req: Request<Incoming>| {
                                let reply = answer(req);
                                async move { Ok::<_, std::convert::Infallible>(reply.await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! { _ = serve => {}, _ = rx => {} }
            });
            // Dropping the runtime drops every connection task: the sockets close.
            drop(rt);
        });
        StandIn { port, _stop: tx }
    }
}
