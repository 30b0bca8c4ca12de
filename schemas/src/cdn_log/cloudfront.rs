//! CloudFront real-time logs: records of tab-separated values in the order of the
//! configuration's field list, `-` for an empty value, times in seconds; 18 `cmcd-*` fields
//! carry the CMCD keys one a field.

use super::{merge_query, set_text, CmcdRequest, LogLineError, ParsedRequest, Raw};

/// CloudFront real-time log fields, in the order of the documented list; a configuration sends
/// a subset of them, in this order, tab-separated, `-` for an empty value.
pub const CLOUDFRONT_FIELDS: &[&str] = &[
    "timestamp",
    "c-ip",
    "time-to-first-byte",
    "sc-status",
    "sc-bytes",
    "cs-method",
    "cs-protocol",
    "cs-host",
    "cs-uri-stem",
    "cs-bytes",
    "x-edge-location",
    "x-edge-request-id",
    "x-host-header",
    "time-taken",
    "cs-protocol-version",
    "c-ip-version",
    "cs-user-agent",
    "cs-referer",
    "cs-cookie",
    "cs-uri-query",
    "x-edge-response-result-type",
    "x-forwarded-for",
    "ssl-protocol",
    "ssl-cipher",
    "x-edge-result-type",
    "fle-encrypted-fields",
    "fle-status",
    "sc-content-type",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
    "c-port",
    "x-edge-detailed-result-type",
    "c-country",
    "cs-accept-encoding",
    "cs-accept",
    "cache-behavior-path-pattern",
    "cs-headers",
    "cs-header-names",
    "cs-headers-count",
    "primary-distribution-id",
    "primary-distribution-dns-name",
    "origin-fbl",
    "origin-lbl",
    "asn",
    "cmcd-encoded-bitrate",
    "cmcd-buffer-length",
    "cmcd-buffer-starvation",
    "cmcd-content-id",
    "cmcd-object-duration",
    "cmcd-deadline",
    "cmcd-measured-throughput",
    "cmcd-next-object-request",
    "cmcd-next-range-request",
    "cmcd-object-type",
    "cmcd-playback-rate",
    "cmcd-requested-maximum-throughput",
    "cmcd-streaming-format",
    "cmcd-session-id",
    "cmcd-stream-type",
    "cmcd-startup",
    "cmcd-top-bitrate",
    "cmcd-version",
];

/// CloudFront's one-field-per-key names, as CMCD keys.
const CLOUDFRONT_CMCD: &[(&str, &str)] = &[
    ("cmcd-encoded-bitrate", "br"),
    ("cmcd-buffer-length", "bl"),
    ("cmcd-buffer-starvation", "bs"),
    ("cmcd-content-id", "cid"),
    ("cmcd-object-duration", "d"),
    ("cmcd-deadline", "dl"),
    ("cmcd-measured-throughput", "mtp"),
    ("cmcd-object-type", "ot"),
    ("cmcd-playback-rate", "pr"),
    ("cmcd-requested-maximum-throughput", "rtp"),
    ("cmcd-streaming-format", "sf"),
    ("cmcd-session-id", "sid"),
    ("cmcd-stream-type", "st"),
    ("cmcd-startup", "su"),
    ("cmcd-top-bitrate", "tb"),
    ("cmcd-version", "v"),
];

/// The field list of a CloudFront real-time log configuration (`fields=a,b,c`), checked
/// against [`CLOUDFRONT_FIELDS`].
pub fn cloudfront_fields(list: &str) -> Result<Vec<String>, String> {
    let fields: Vec<String> = list.split(',').map(|f| f.trim().to_owned()).collect();
    for f in &fields {
        if !CLOUDFRONT_FIELDS.contains(&f.as_str()) {
            return Err(format!("{f:?} is not a CloudFront real-time log field"));
        }
    }
    for required in ["timestamp", "sc-status"] {
        if !fields.iter().any(|f| f == required) {
            return Err(format!("the field list must include {required}"));
        }
    }
    Ok(fields)
}

/// One CloudFront real-time log record: `values` tab-separated in the order of `fields`.
pub fn parse_cloudfront_line<S: AsRef<str>>(
    line: &str,
    fields: &[S],
) -> Result<ParsedRequest, LogLineError> {
    let values: Vec<&str> = line.trim_end_matches(['\r', '\n']).split('\t').collect();
    if values.len() != fields.len() {
        return Err(LogLineError::FieldCount {
            got: values.len(),
            want: fields.len(),
        });
    }
    let get = |name: &str| {
        fields
            .iter()
            .position(|f| f.as_ref() == name)
            .map(|i| values[i])
            .filter(|v| !v.is_empty() && *v != "-")
    };
    let seconds_to_ms = |v: &str| v.parse::<f64>().ok().map(|s| (s * 1000.0).round());
    let time = get("timestamp")
        .and_then(seconds_to_ms)
        .filter(|t| t.is_finite() && *t > 0.0)
        .ok_or(LogLineError::Missing("timestamp"))? as i64;
    let status = get("sc-status")
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(LogLineError::Missing("sc-status"))?;
    let mut cmcd = CmcdRequest::default();
    if let Some(query) = get("cs-uri-query") {
        merge_query(&mut cmcd, query);
    }
    for (field, key) in CLOUDFRONT_CMCD {
        if let Some(v) = get(field) {
            set_text(&mut cmcd, key, v);
        }
    }
    let raw = Raw {
        time,
        status,
        bytes: get("sc-bytes").and_then(|b| b.parse().ok()).unwrap_or(0),
        ttfb: get("time-to-first-byte").and_then(seconds_to_ms),
        ttlb: get("time-taken").and_then(seconds_to_ms),
        host: get("cs-host")
            .or_else(|| get("x-host-header"))
            .unwrap_or(""),
        path: get("cs-uri-stem").unwrap_or("/"),
        request_id: get("x-edge-request-id"),
        client_ip: get("c-ip"),
        user_agent: get("cs-user-agent").map(|ua| {
            percent_encoding::percent_decode_str(ua)
                .decode_utf8_lossy()
                .into_owned()
        }),
        region: None,
    };
    raw.finish(line, cmcd)
}
