//! What every service process shares besides observability: the wall clock in the pipeline's
//! unit (ms since the epoch) and one shutdown mechanism.
//!
//! Shutdown: `main` creates a [`Shutdown`] token and triggers it from [`shutdown_signal`]
//! (SIGINT or SIGTERM). Async code awaits `token.cancelled()`; blocking loops (the
//! aggregator's consumer thread) check `token.is_cancelled()` each turn. Each service then
//! drains what it owns (the collector its in-flight requests and producer, the aggregator its
//! pending batches) before exiting.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Wall-clock time in ms since the Unix epoch (0 if the clock is before the epoch).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// A token that is triggered by the first SIGINT or SIGTERM (see [`shutdown_signal`]).
pub fn shutdown_on_signal() -> Shutdown {
    let token = Shutdown::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_is_in_milliseconds() {
        let t = super::now_ms();
        assert!(t > 1_700_000_000_000 && t < 10_000_000_000_000);
    }
}
