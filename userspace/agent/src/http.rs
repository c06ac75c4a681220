//! The agent's deliberately small HTTP/1.1 responder (GET only, one
//! request per connection, bounded in size and time), shared by /metrics
//! and the health endpoints.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// One answer.
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: &'static str, content_type: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }
}

/// Reads one request head; returns its method and path.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req = String::from_utf8_lossy(&buf);
    let mut parts = req.split_whitespace();
    Ok((parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string()))
}

async fn respond(conn: &mut TcpStream, r: Response) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n", r.status, r.content_type, r.body.len());
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(r.body.as_bytes()).await?;
    conn.shutdown().await
}

/// Serves `listener` with `answer(method, path)` until the task is
/// dropped or aborted. Non-GET requests get 405.
pub fn spawn<F, Fut>(listener: TcpListener, answer: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async move {
                    let (method, path) = read_request(&mut conn).await?;
                    let r = if method == "GET" { answer(path).await } else { Response::new("405 Method Not Allowed", "text/plain", "GET only\n") };
                    respond(&mut conn, r).await
                })
                .await;
            });
        }
    })
}

/// Binds `addr` (a TCP listener for [`spawn`]).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
