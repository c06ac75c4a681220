//! The agent's HTTP/1.1 servers (hyper): /metrics and the probes, kube-proxy's
//! health endpoints, and the local endpoint API on a Unix socket. Every
//! server holds at most `max_connections` connections (the accept loop
//! waits for a free slot), bounds each connection's lifetime and each
//! request body, and backs off when accept fails (EMFILE) instead of
//! spinning.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, header, service::service_fn, Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

/// One answer.
pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }

    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain", body)
    }
}

/// One request, its body read whole (bounded by [`Limits::max_body`]).
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
}

/// What one server allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; the accept loop waits for a free slot.
    pub max_connections: usize,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_lifetime: Duration,
    pub max_body: usize,
}

impl Limits {
    /// /metrics and the probes: scrapes and kubelet probes.
    pub const PUBLIC: Limits = Limits { max_connections: 64, connection_lifetime: Duration::from_secs(30), max_body: 0 };
}

/// A listener the servers accept from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// The `Server` header of every answer: which agent runs (`weir status`
/// shows it).
pub const SERVER: &str = concat!("weir-agent/", env!("CARGO_PKG_VERSION"));

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() = r.status;
    let h = out.headers_mut();
    h.insert(header::SERVER, header::HeaderValue::from_static(SERVER));
    if let Ok(v) = header::HeaderValue::from_str(r.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), header::HeaderValue::from_str(&v)) {
            h.insert(k, v);
        }
    }
    out
}

/// Serves `listener` with `handler` until the task is dropped or aborted.
pub fn serve<L, F, Fut>(listener: L, limits: Limits, handler: F) -> tokio::task::JoinHandle<()>
where
    L: Accept,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let io = match listener.accept().await {
                Ok(io) => {
                    backoff = Duration::from_millis(10);
                    io
                }
                Err(error) => {
                    // EMFILE, ENFILE, ENOMEM...: wait rather than spin.
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "accepting an HTTP connection");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match Limited::new(body, limits.max_body).collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => {
                                return Ok::<_, Infallible>(to_hyper(Response::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")));
                            }
                        };
                        let path = parts.uri.path().to_string();
                        Ok(to_hyper(handler(Request { method: parts.method, path, body }).await))
                    }
                });
                // half_close: a client that shuts its write side right after
                // its request (simple probes, `nc`) still gets its answer.
                let conn = hyper::server::conn::http1::Builder::new().half_close(true).serve_connection(TokioIo::new(io), svc);
                let _ = tokio::time::timeout(limits.connection_lifetime, conn).await;
                drop(permit);
            });
        }
    })
}

/// Serves GET requests with `answer(path)`; any other method gets 405.
pub fn spawn<F, Fut>(listener: TcpListener, answer: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve(listener, Limits::PUBLIC, move |req: Request| {
        let answer = answer.clone();
        async move {
            if req.method == Method::GET {
                answer(req.path).await
            } else {
                let mut r = Response::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
                r.headers.push(("Allow", "GET".into()));
                r
            }
        }
    })
}

/// Binds `addr` (a TCP listener for [`spawn`]).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn answers_get_refuses_other_methods_and_bounds_connections() {
        let l = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let limits = Limits { max_connections: 1, connection_lifetime: Duration::from_millis(500), max_body: 4 };
        let task = serve(l, limits, |r: Request| async move {
            if r.method == Method::GET { Response::text(StatusCode::OK, format!("path {}\n", r.path)) } else { Response::text(StatusCode::OK, format!("{} bytes\n", r.body.len())) }
        });
        let out = get(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK") && out.contains("path /metrics"), "{out}");
        let out = get(addr, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\nConnection: close\r\n\r\n123456789").await;
        assert!(out.starts_with("HTTP/1.1 413"), "a body over the limit: {out}");
        // One slot: an idle connection holds it until its lifetime ends,
        // then the next one is served.
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let start = std::time::Instant::now();
        let out = get(addr, "GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(out.contains("path /second"), "{out}");
        assert!(start.elapsed() >= Duration::from_millis(300), "the second connection waited for the slot: {:?}", start.elapsed());
        task.abort();
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
        let l = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        // One slot, held by an idle connection: the next one's request and
        // FIN are both queued before the server reads anything.
        let limits = Limits { max_connections: 1, connection_lifetime: Duration::from_millis(300), max_body: 0 };
        let task = serve(l, limits, |r: Request| async move { Response::text(StatusCode::OK, r.path) });
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        s.shutdown().await.expect("half close");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.expect("the server closes").expect("read");
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("/healthz"), "{out}");
        task.abort();
    }

    #[tokio::test]
    async fn get_only_servers_answer_405_to_post() {
        let l = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = spawn(l, |p: String| async move { Response::text(StatusCode::OK, p) });
        let out = get(addr, "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 405") && out.contains("allow: GET"), "{out}");
        task.abort();
    }
}
