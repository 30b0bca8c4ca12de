//! What every service process shares besides observability: the wall clock in the pipeline's
//! unit (ms since the epoch), one shutdown mechanism, and the parser of `key=value` options
//! (`--kafka-option`) both command lines take.
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

/// Parses a `key=value` command-line value (the key trimmed, non-empty). The error never
/// repeats the value: a Kafka option can hold a password.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| "expected key=value (no `=` found)".to_owned())?;
    let k = k.trim();
    if k.is_empty() {
        return Err("expected key=value (the key is empty)".to_owned());
    }
    Ok((k.to_owned(), v.trim().to_owned()))
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

    use super::parse_key_value;

    #[test]
    fn key_value_options_parse_and_errors_do_not_echo_secrets() {
        assert_eq!(
            parse_key_value(" sasl.password = a=b ").unwrap(),
            ("sasl.password".to_owned(), "a=b".to_owned())
        );
        let err = parse_key_value("hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(parse_key_value("=x").is_err());
    }
}
