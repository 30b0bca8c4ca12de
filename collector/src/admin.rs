//! The admin listener: `GET /healthz` (liveness), `GET /readyz` (whether Kafka is reachable,
//! cached for a second, so probes cannot turn into a flood of Kafka metadata requests) and
//! `GET /metrics` (Prometheus). Served apart from the public listener (loopback by default).

use crate::http::{error, AppState};
use crate::names;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// How long a readiness answer is reused.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The admin listener's routes: liveness, readiness, Prometheus metrics. Served apart from the
/// public one (loopback by default), so the public cannot reach them or flood them.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let cached = *state.readiness.lock().unwrap_or_else(|p| p.into_inner());
    let ready = match cached {
        Some((at, ready)) if at.elapsed() < READINESS_TTL => ready,
        _ => {
            let ready = state.sink.ready().await;
            *state.readiness.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), ready));
            ready
        }
    };
    if ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "Kafka is not reachable")
    }
}

async fn metrics_endpoint(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!(names::KAFKA_IN_FLIGHT).set(f64::from(state.sink.in_flight()));
    metrics::gauge!(names::RATE_LIMITER_BUCKETS).set(state.rate.state_size() as f64);
    metrics::gauge!(names::IN_FLIGHT_BYTES).set(state.in_flight.body_bytes() as f64);
    match &state.prometheus {
        Some(p) => p.render().into_response(),
        None => error(StatusCode::NOT_FOUND, "metrics are not enabled"),
    }
}
