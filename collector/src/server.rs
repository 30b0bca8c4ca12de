//! The HTTP/1.1 accept loop: serves the router on every connection, bounds the number of open
//! connections (over the cap, a connection gets a `503` with `Retry-After` and is closed at
//! once), cuts off clients that do not finish sending their request headers in time (a
//! slow-header client otherwise holds a connection and its memory forever) or do not read
//! what they are sent (write timeout), and shuts down gracefully.
//!
//! The router's own timeout layer bounds everything after the headers (body read, handling,
//! Kafka acknowledgement); this module bounds the part before them, which no layer sees.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tower::ServiceExt;

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed from the start of a request (or the connection) to the end of its headers.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests to finish.
    pub shutdown_grace: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// A write that makes no progress for this long closes the connection (a client that
    /// never reads its answers cannot hold them in memory).
    pub write_timeout: Duration,
}

/// What a connection over the cap gets before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: application/json\r\nContent-Length: 45\r\nConnection: close\r\n\r\n\
{\"error\":\"too many connections, retry later\"}";

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish (at most `limits.shutdown_grace`) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::names::CONNECTIONS_REFUSED).increment(1);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY))
                        .await;
            });
            continue;
        };
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = Box::pin(stream);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "in-flight requests did not finish within the shutdown grace period");
        }
    }
}
