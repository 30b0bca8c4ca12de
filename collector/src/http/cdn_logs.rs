//! `POST /v1/cdn-logs`: CDN and origin log streams in (JSON lines, or CloudFront real-time log
//! records with `format=cloudfront`), one Kafka message per request out.
//!
//! Statuses as log shippers act on them: 204 when every line is in Kafka; 200 with counts when
//! some lines were skipped (they are counted by reason; resending them would not help); 413
//! when the body has more lines than `--max-log-lines` (nothing published; the shipper's batch
//! must be smaller); 429 and 503 with Retry-After, which shippers retry. A retried body is not
//! counted twice: each request carries the id of its line (see `qoe_schemas::cdn_log`).

use super::{admit, error, publish_failed, AppState};
use crate::cdn_logs::{LogFormat, StreamContext};
use crate::names;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Parameters of the URL a log stream is pointed at.
#[derive(Deserialize)]
pub(super) struct LogQuery {
    key: Option<String>,
    /// `json` (default) or `cloudfront`.
    format: Option<String>,
    /// CloudFront: the configuration's field list, comma-separated, in order.
    fields: Option<String>,
    /// The CDN this stream comes from, when the endpoint is one per CDN.
    cdn: Option<String>,
}

pub(super) async fn post_cdn_logs(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let span = tracing::info_span!(
        "cdn_logs",
        otel.kind = "server",
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    );
    handle(&state, peer, query, &headers, request)
        .instrument(span)
        .await
}

async fn handle(
    state: &AppState,
    peer: SocketAddr,
    query: LogQuery,
    headers: &HeaderMap,
    request: Request,
) -> Response {
    let received_at = qoe_telemetry::process::now_ms();
    let format = match LogFormat::from_query(query.format.as_deref(), query.fields.as_deref()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let cdn = crate::cmcd::dimension(query.cdn.as_deref(), &state.limits);
    let admitted = match admit(
        state,
        peer,
        query.key.as_deref(),
        headers,
        request,
        crate::cdn_logs::check_content_type,
    )
    .await
    {
        Ok(a) => a,
        Err(response) => return response,
    };
    let batch = {
        let no_headers = HeaderMap::new();
        let region_of = |ip| state.region.resolve(ip, &no_headers, false);
        let stream = StreamContext {
            cdn: cdn.as_deref(),
            hosts: &state.cdn_hosts,
            limits: &state.limits,
            max_lines: state.max_log_lines,
            region_of: &region_of,
        };
        crate::cdn_logs::process(&admitted.body, &format, received_at, &stream)
    };
    if batch.rejected.contains(&"too_many_lines") {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "more than {} lines in one body: nothing was taken, send smaller batches",
                state.max_log_lines
            ),
        );
    }
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    for reason in &batch.rejected {
        metrics::counter!(names::CDN_LOG_LINES_REJECTED, "reason" => *reason).increment(1);
        *reasons.entry(reason).or_default() += 1;
    }
    let span = tracing::Span::current();
    span.record("accepted", batch.messages.len());
    span.record("rejected", batch.rejected.len());
    if !batch.messages.is_empty() {
        if let Err(e) = state.sink.publish_keyed(&batch.messages, None).await {
            return publish_failed(&e, batch.messages.len());
        }
        metrics::counter!(names::CDN_LOG_REQUESTS_ACCEPTED).increment(batch.messages.len() as u64);
    }
    if batch.rejected.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::OK,
            Json(serde_json::json!({
                "accepted": batch.messages.len(),
                "rejected": batch.rejected.len(),
                "reasons": reasons,
            })),
        )
            .into_response()
    }
}
