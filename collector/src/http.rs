//! The HTTP surface: `POST /v1/beacons`, `POST /v1/cmcd`, `POST /v1/cdn-logs` (in
//! [`cdn_logs`]) and `GET /healthz` on the public listener, with the
//! tower layers around them (CORS, body limits, gzip decompression, request timeout); and the
//! admin listener's `GET /healthz`, `GET /readyz` (cached for a second, so probes cannot turn
//! into a flood of Kafka metadata requests) and `GET /metrics` (in [`crate::admin`]).
//!
//! Status codes follow beacon protocol v1: 204 all accepted; 200 with counts and reasons when
//! some events were rejected; 400 unusable envelope; 401 missing ingest key; 413 too large;
//! 415 unsupported type or encoding; 429 rate limited; 503 Kafka cannot take more. Every
//! error body is JSON `{"error": ...}`, its reason cut to [`ingest::MAX_REASON_BYTES`] so that an
//! answer never echoes a large input back.
//!
//! A refused request costs as little as possible: the ingest key, the client's request limit
//! and the content type are checked from the head, before the body is read or decompressed
//! (so `Expect: 100-continue` gets its answer instead of a 100).

mod cdn_logs;

use crate::client::{client_ip, is_trusted, RegionResolver};
use crate::ingest::{self, IngestError, RejectedEvent};
use crate::names;
use crate::rate_limit::{Limited, RateLimits};
use crate::sink::{PublishError, Sink};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

/// Everything a request handler needs, shared by all of them.
pub struct AppState {
    pub limits: qoe_schemas::Limits,
    pub sink: Sink,
    pub rate: RateLimits,
    pub region: RegionResolver,
    /// Host-to-CDN rules for CMCD reports and CDN log requests.
    pub cdn_hosts: crate::cmcd::CdnHostMap,
    /// Most lines one `POST /v1/cdn-logs` body may hold.
    pub max_log_lines: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub ingest_keys: HashSet<String>,
    pub prometheus: Option<PrometheusHandle>,
    /// The last readiness answer and when it was computed.
    pub readiness: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// Load shedding: beacon requests being handled, and bytes of bodies they hold.
    pub in_flight: InFlight,
}

/// Budgets of work in progress; a request that finds one used up gets 503 + Retry-After at
/// once, before memory grows.
pub struct InFlight {
    requests: Arc<tokio::sync::Semaphore>,
    body_bytes: Arc<tokio::sync::Semaphore>,
    body_bytes_max: usize,
}

impl InFlight {
    pub fn new(max_requests: usize, max_body_bytes: usize) -> Self {
        InFlight {
            requests: Arc::new(tokio::sync::Semaphore::new(max_requests.max(1))),
            body_bytes: Arc::new(tokio::sync::Semaphore::new(max_body_bytes.max(1))),
            body_bytes_max: max_body_bytes.max(1),
        }
    }

    /// Bytes of bodies currently held.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes_max - self.body_bytes.available_permits()
    }
}

/// Whether reading the body failed on a size limit, wherever in the chain of body wrappers
/// (limit, decompression) it was raised: a chunked body over the limit surfaces wrapped.
fn over_length_limit(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn overloaded(kind: &'static str) -> Response {
    metrics::counter!(names::OVERLOADED, "kind" => kind).increment(1);
    retry_after(
        StatusCode::SERVICE_UNAVAILABLE,
        "the collector is overloaded, retry later",
        backpressure_retry_after(),
    )
}

#[derive(Debug, Serialize)]
struct PartialAccept<'a> {
    accepted: usize,
    rejected: &'a [RejectedEvent],
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// Parameters of the CMCD target URL a page configures: the ingest key, and what the page
/// knows of itself that CMCD does not carry.
#[derive(Deserialize)]
struct CmcdQuery {
    key: Option<String>,
    cdn: Option<String>,
    platform: Option<String>,
    player: Option<String>,
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = ingest::truncate_reason(&message.into(), ingest::MAX_REASON_BYTES);
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Retry-After for a 503: 1-3 s, random, so that clients refused together do not all come
/// back in the same second.
fn backpressure_retry_after() -> Duration {
    Duration::from_secs(rand::random_range(1..=3))
}

fn retry_after(status: StatusCode, message: &str, after: Duration) -> Response {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    let mut response = error(status, message);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The HTTP layer's settings; `Config::http_config` builds them from the flags.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Allowed CORS origins; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Largest request body as sent (compressed).
    pub max_body_bytes: usize,
    /// Largest request body after decompression.
    pub max_decompressed_bytes: usize,
    /// Everything after the headers, body included, must arrive within this.
    pub request_timeout: Duration,
}

pub fn router(state: Arc<AppState>, config: &HttpConfig) -> Router {
    let cors = CorsLayer::new()
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            HeaderName::from_static("x-qoe-key"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([HeaderName::from_static("traceparent"), header::RETRY_AFTER])
        .max_age(Duration::from_secs(86_400))
        .allow_origin(if config.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                config
                    .cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        });

    let beacons = Router::new()
        .route("/v1/beacons", post(post_beacons))
        .route("/v1/cmcd", post(post_cmcd))
        .route("/v1/cdn-logs", post(cdn_logs::post_cdn_logs))
        // Layers run bottom-up on the request: the compressed size is limited first, then the
        // body is decompressed as it streams, and the decompressed size is limited while
        // reading, so a gzip bomb stops at the limit.
        .layer(DefaultBodyLimit::max(config.max_decompressed_bytes))
        .layer(RequestDecompressionLayer::new().gzip(true))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(cors);

    Router::new()
        .merge(beacons)
        .route("/healthz", get(|| async { "ok" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(axum::middleware::from_fn(count_responses))
        .with_state(state)
}

async fn count_responses(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path: &'static str = match request.uri().path() {
        "/v1/beacons" => "/v1/beacons",
        "/v1/cmcd" => "/v1/cmcd",
        "/v1/cdn-logs" => "/v1/cdn-logs",
        "/healthz" => "/healthz",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "path" => path, "status" => status).increment(1);
    metrics::histogram!(names::HTTP_REQUEST_SECONDS, "path" => path)
        .record(started.elapsed().as_secs_f64());
    response
}

fn rate_limited(hit: Limited) -> Response {
    metrics::counter!(names::RATE_LIMITED, "scope" => hit.scope).increment(1);
    retry_after(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("rate limited ({} limit)", hit.scope),
        hit.retry_after,
    )
}

async fn post_beacons(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let span = tracing::info_span!(
        "beacon",
        otel.kind = "server",
        view_id = tracing::field::Empty,
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    );
    let traceparent = continue_client_trace(&span, &headers);
    let mut response = handle_beacon(
        &state,
        peer,
        query,
        &headers,
        request,
        traceparent.as_deref(),
    )
    .instrument(span)
    .await;
    answer_with_trace(&mut response, traceparent);
    response
}

/// Makes `span` a child of the client's `traceparent`, if it sent one; returns the span's own
/// traceparent, which travels to Kafka and back to the client.
fn continue_client_trace(span: &tracing::Span, headers: &HeaderMap) -> Option<String> {
    let header_pairs: Vec<(&str, &str)> = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("traceparent", v)])
        .unwrap_or_default();
    qoe_telemetry::extract(span, &header_pairs);
    qoe_telemetry::traceparent(span)
}

fn answer_with_trace(response: &mut Response, traceparent: Option<String>) {
    if let Some(tp) = traceparent.and_then(|tp| HeaderValue::from_str(&tp).ok()) {
        response.headers_mut().insert("traceparent", tp);
    }
}

/// A request that passed the checks every ingest route shares, with its body read: the
/// permits hold its in-flight request slot and body bytes until it is answered.
struct Admitted {
    body: Bytes,
    ip: std::net::IpAddr,
    _request_slot: tokio::sync::OwnedSemaphorePermit,
    _body_permit: tokio::sync::OwnedSemaphorePermit,
}

/// The checks of every ingest route, cheapest first and from the head only (ingest key, the
/// client's request limit, the global one, an in-flight slot, the content type), then the body
/// (size limits, decompression, in-flight byte budget).
async fn admit(
    state: &AppState,
    peer: SocketAddr,
    query_key: Option<&str>,
    headers: &HeaderMap,
    request: Request,
    check_content_type: fn(Option<&str>) -> Result<(), IngestError>,
) -> Result<Admitted, Response> {
    if !state.ingest_keys.is_empty() {
        let key = headers
            .get("x-qoe-key")
            .and_then(|v| v.to_str().ok())
            .or(query_key);
        if !key.is_some_and(|k| state.ingest_keys.contains(k)) {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "missing or unknown ingest key",
            ));
        }
    }
    let ip = client_ip(peer.ip(), headers, &state.trusted_proxies);
    if let Err(hit) = state.rate.check_client(ip) {
        return Err(rate_limited(hit));
    }
    let Ok(request_slot) = state.in_flight.requests.clone().try_acquire_owned() else {
        return Err(overloaded("requests"));
    };
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type is not visible ASCII",
            ))
        }
    };
    if let Err(e) = check_content_type(content_type) {
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string()));
    }
    // Only now is the body read (and decompressed, within the limits of the layers).
    let body = match Bytes::from_request(request, &()).await {
        Ok(b) => b,
        Err(rejection) => {
            let status = if over_length_limit(&rejection) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                rejection.status()
            };
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body exceeds the size limit (compressed or decompressed)".to_owned()
            } else {
                format!("cannot read body: {}", rejection.body_text())
            };
            return Err(error(status, message));
        }
    };
    // The body stays alive until Kafka acknowledges its events: it counts against the budget.
    let Some(body_permit) = u32::try_from(body.len()).ok().and_then(|n| {
        state
            .in_flight
            .body_bytes
            .clone()
            .try_acquire_many_owned(n)
            .ok()
    }) else {
        return Err(overloaded("body_bytes"));
    };
    Ok(Admitted {
        body,
        ip,
        _request_slot: request_slot,
        _body_permit: body_permit,
    })
}

/// The answer to a request whose messages Kafka did not take: 503 + Retry-After.
fn publish_failed(e: &PublishError, messages: usize) -> Response {
    metrics::counter!(names::PUBLISH_FAILURES, "kind" => match e {
        PublishError::QueueFull => "queue_full",
        PublishError::Timeout => "timeout",
        PublishError::Delivery(_) => "delivery",
    })
    .increment(1);
    tracing::warn!(error = %e, messages, "publish failed; answering 503");
    retry_after(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("cannot publish right now: {e}"),
        backpressure_retry_after(),
    )
}

async fn handle_beacon(
    state: &AppState,
    peer: SocketAddr,
    query: KeyQuery,
    headers: &HeaderMap,
    request: Request,
    traceparent: Option<&str>,
) -> Response {
    let received_at = qoe_telemetry::process::now_ms();
    let admitted = match admit(
        state,
        peer,
        query.key.as_deref(),
        headers,
        request,
        ingest::check_content_type,
    )
    .await
    {
        Ok(a) => a,
        Err(response) => return response,
    };
    let (body, ip) = (&admitted.body, admitted.ip);
    let peer_trusted = is_trusted(&peer.ip(), &state.trusted_proxies);
    let server_region = state.region.resolve(ip, headers, peer_trusted);
    let accepted = match ingest::process(body, received_at, server_region.as_deref(), &state.limits)
    {
        Ok(a) => a,
        Err(e @ IngestError::TooManyEvents(_)) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    tracing::Span::current().record("view_id", accepted.context.view_id.as_str());
    if let Err(hit) = state.rate.check_view(&accepted.context.view_id) {
        return rate_limited(hit);
    }
    if let Err(hit) = state.rate.check_client_events(ip, accepted.events.len()) {
        return rate_limited(hit);
    }
    for r in &accepted.rejected {
        metrics::counter!(names::EVENTS_REJECTED, "reason" => r.class).increment(1);
    }
    tracing::Span::current().record("accepted", accepted.events.len());
    tracing::Span::current().record("rejected", accepted.rejected.len());

    if !accepted.events.is_empty() {
        if let Err(e) = state
            .sink
            .publish(&accepted.context, &accepted.events, traceparent)
            .await
        {
            return publish_failed(&e, accepted.events.len());
        }
        metrics::counter!(names::EVENTS_ACCEPTED).increment(accepted.events.len() as u64);
    }

    if accepted.rejected.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::OK,
            Json(PartialAccept {
                accepted: accepted.events.len(),
                rejected: &accepted.rejected,
            }),
        )
            .into_response()
    }
}

async fn post_cmcd(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<CmcdQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let span = tracing::info_span!(
        "cmcd",
        otel.kind = "server",
        sid = tracing::field::Empty,
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    );
    let traceparent = continue_client_trace(&span, &headers);
    let mut response = handle_cmcd(
        &state,
        peer,
        query,
        &headers,
        request,
        traceparent.as_deref(),
    )
    .instrument(span)
    .await;
    answer_with_trace(&mut response, traceparent);
    response
}

/// `POST /v1/cmcd`: statuses as players act on them (CTA-5004-B §5-6): 204 when the valid
/// lines are in Kafka (invalid ones are skipped and counted, the player cannot be told); 429
/// and 503 with Retry-After, which players retry; never another 4xx for a temporary problem,
/// since players drop the data on it.
async fn handle_cmcd(
    state: &AppState,
    peer: SocketAddr,
    query: CmcdQuery,
    headers: &HeaderMap,
    request: Request,
    traceparent: Option<&str>,
) -> Response {
    let received_at = qoe_telemetry::process::now_ms();
    let admitted = match admit(
        state,
        peer,
        query.key.as_deref(),
        headers,
        request,
        crate::cmcd::check_content_type,
    )
    .await
    {
        Ok(a) => a,
        Err(response) => return response,
    };
    let peer_trusted = is_trusted(&peer.ip(), &state.trusted_proxies);
    let region = ingest::resolve_region(
        state
            .region
            .resolve(admitted.ip, headers, peer_trusted)
            .as_deref(),
        None,
    );
    let defaults = crate::cmcd::ClientDefaults::new(
        query.cdn.as_deref(),
        query.platform.as_deref(),
        query.player.as_deref(),
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        &state.limits,
    );
    let batch = crate::cmcd::process(
        &admitted.body,
        received_at,
        &region,
        &defaults,
        &state.cdn_hosts,
        &state.limits,
    );
    for reason in &batch.rejected {
        metrics::counter!(names::CMCD_LINES_REJECTED, "reason" => *reason).increment(1);
    }
    let span = tracing::Span::current();
    span.record("accepted", batch.messages.len());
    span.record("rejected", batch.rejected.len());
    if let Some((sid, _)) = batch.messages.first() {
        span.record("sid", sid.as_str());
    }
    let mut sids: Vec<&str> = batch.messages.iter().map(|(s, _)| s.as_str()).collect();
    sids.sort_unstable();
    sids.dedup();
    for sid in sids {
        if let Err(hit) = state.rate.check_view(sid) {
            return rate_limited(hit);
        }
    }
    if let Err(hit) = state
        .rate
        .check_client_events(admitted.ip, batch.messages.len())
    {
        return rate_limited(hit);
    }
    if !batch.messages.is_empty() {
        if let Err(e) = state.sink.publish_keyed(&batch.messages, traceparent).await {
            return publish_failed(&e, batch.messages.len());
        }
        metrics::counter!(names::CMCD_REPORTS_ACCEPTED).increment(batch.messages.len() as u64);
    }
    StatusCode::NO_CONTENT.into_response()
}
