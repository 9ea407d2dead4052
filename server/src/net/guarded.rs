//! The front's HTTP/1.1 server, guarded against slow and abusive clients:
//!
//! - a connection must send each request head within `header_read_timeout` (also how long an
//!   idle keep-alive connection is kept), else it is closed;
//! - a request body must arrive whole within `body_read_timeout` of its head, else the
//!   request gets a 408 ([`is_body_timeout`] tells the handler);
//! - after `max_requests_per_connection` requests a connection gets `connection: close`;
//! - at most `max_connections` are open. A new one past the cap closes the oldest connection
//!   that is not serving a request (one that is stalled, or idle between requests), so
//!   stalled connections cannot lock good clients out; only when every connection is in a
//!   request is the new one refused with a 503 and closed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::Service;

/// What the front allows a client (`[router]` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: u64,
}

/// Counts of what the guard did, for `/metrics`.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections refused (every open one was in a request).
    pub refused: AtomicU64,
}

/// One open connection.
#[derive(Debug, Default)]
struct Conn {
    /// Requests it is serving now (a streamed response counts until its body ends).
    busy: AtomicUsize,
    /// Told to close to make room.
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    stats: Arc<GuardStats>,
}

impl Registry {
    /// Room for a new connection (closing the oldest idle one at the cap), or `None`.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= max {
            let idle = conns
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&idle) {
                c.evict.notify_one();
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        conns.insert(id, conn.clone());
        self.stats.open.store(conns.len(), Ordering::Relaxed);
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
            self.stats.open.store(conns.len(), Ordering::Relaxed);
        }
    }

    fn is_empty(&self) -> bool {
        self.conns.lock().map(|c| c.is_empty()).unwrap_or(true)
    }
}

/// Most refusals being written at once (past it a refused connection is just closed).
const MAX_REFUSING: usize = 256;

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then closes the
/// listener, answers requests that still arrive on open connections with 503 and
/// `Retry-After`, and lets the open requests finish (the caller bounds how long). `stats`
/// counts what the guard did.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<GuardStats>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        stats,
        ..Registry::default()
    });
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match registry.admit(limits.max_connections) {
            Some((id, conn)) => {
                let (app, registry, stop) = (app.clone(), registry.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    serve_connection(tcp, app, limits, conn, stop).await;
                    registry.remove(id);
                });
            }
            None => {
                registry.stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(tcp).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    // Closed at once: a new connection is refused rather than left waiting in the backlog.
    drop(listener);
    let _ = stop_tx.send(true);
    while !registry.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    conn: Arc<Conn>,
    mut stop: watch::Receiver<bool>,
) {
    let served = Arc::new(AtomicU64::new(0));
    let state = conn.clone();
    let draining = stop.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        // A request that arrives while the server drains is answered at once, never held.
        let refused = (*draining.borrow()).then(|| shutting_down(req.uri().path()));
        let busy = Busy::new(state.clone());
        let req = req.map(|b| Body::new(DeadlineBody::new(b, limits.body_read_timeout)));
        let mut app = app.clone();
        async move {
            let response = match refused {
                Some(response) => response,
                None => match app.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
            };
            let (mut parts, body) = response.into_parts();
            if n >= limits.max_requests_per_connection {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let body = Body::new(WhileBusy {
                inner: body,
                _busy: busy,
            });
            Ok::<_, Infallible>(axum::http::Response::from_parts(parts, body))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = conn.evict.notified() => {
                tracing::debug!("connection closed to make room for a new one");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The answer to a request that arrives while the server drains: 503 in the route's error
/// shape, `Retry-After`, and the connection closed.
fn shutting_down(path: &str) -> axum::response::Response {
    let error = crate::api::error::ApiError::Unhealthy(
        "the server is shutting down; retry on another instance".into(),
    );
    let mut response = crate::api::error::shaped(path, error);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers a connection past the cap with a 503 and closes it.
async fn refuse(mut tcp: TcpStream) {
    let body = r#"{"error":"the server has too many open connections, all in requests; retry later","error_type":"overloaded"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection before it has
        // read the answer.
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A request in progress on a connection, until dropped.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted busy until it is done.
struct WhileBusy {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for WhileBusy {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `error` (or what caused it) is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A request body that must arrive whole before a deadline.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises this process's soft limit on open files to its hard limit (every connection is
/// one); the limit it has now.
pub fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    }
}

/// Files the process keeps for itself beside client connections (workers, pooled
/// connections to them, logs).
pub const RESERVED_FILES: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let r = Registry::default();
        let (a, conn_a) = r.admit(2).unwrap();
        let (_b, conn_b) = r.admit(2).unwrap();
        let busy_a = Busy::new(conn_a.clone());
        // a is busy: b, the oldest idle one, goes.
        let (c, _) = r.admit(2).unwrap();
        assert_eq!(r.stats.evicted.load(Ordering::Relaxed), 1);
        assert!(!r.conns.lock().unwrap().contains_key(&1));
        let _busy_c = Busy::new(r.conns.lock().unwrap()[&c].clone());
        // Both busy: refused.
        assert!(r.admit(2).is_none());
        drop(busy_a);
        assert!(r.admit(2).is_some(), "a is idle again");
        assert!(!r.conns.lock().unwrap().contains_key(&a));
        drop(conn_b);
    }

    #[test]
    fn a_body_timeout_is_found_in_the_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] BodyTimeout);
        assert!(is_body_timeout(&Wrapper(BodyTimeout(Duration::from_secs(
            1
        )))));
        assert!(!is_body_timeout(&std::io::Error::other("x")));
    }
}
