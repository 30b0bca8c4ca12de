//! Who sent a request: the client address (`Forwarded` / `X-Forwarded-For` honoured only from
//! trusted proxies) and the server-side region (edge header, believed only from trusted
//! proxies too, else GeoIP database).
//! The address is used for rate limiting and region lookup only; it is never published.

use axum::http::{header, HeaderMap};
use ipnet::IpNet;
use qoe_schemas::validate::normalize_dimension;
use std::net::IpAddr;
use std::path::Path;

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: &IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `Forwarded` (else `X-Forwarded-For`) that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted(ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    // The standard header wins over the de-facto one when a proxy sends both.
    let hops = if headers.contains_key(header::FORWARDED) {
        forwarded_hops(headers)
    } else {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().ok())
            .flat_map(|text| match text {
                Some(t) => t.split(',').map(|part| Some(part.to_owned())).collect(),
                None => vec![None],
            })
            .collect()
    };
    // Walk from the nearest hop back; stop at the first untrusted address, or at an entry
    // that is not an address ("unknown", an obfuscated id, garbage) keeping the last good one.
    let mut candidate = peer;
    for hop in hops.iter().rev() {
        match hop.as_deref().and_then(parse_node) {
            Some(ip) => {
                candidate = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            None => return candidate,
        }
    }
    candidate
}

/// The `for=` values of every `Forwarded` element (RFC 7239), in order; `None` for an element
/// without one or a header that is not text.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<String>> {
    let mut hops = Vec::new();
    for value in headers.get_all(header::FORWARDED) {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().to_owned())
            });
            hops.push(node);
        }
    }
    hops
}

/// An address from a forwarding header's node: `203.0.113.9`, `203.0.113.9:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`, optionally quoted. `unknown` and obfuscated
/// identifiers (`_hidden`) are not addresses.
pub fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    match node.split_once(':') {
        Some((v4, port)) if port.bytes().all(|b| b.is_ascii_digit()) => v4.parse().ok(),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot open GeoIP database {path}: {source}")]
    Open {
        path: String,
        source: maxminddb::MaxMindDbError,
    },
    #[error("invalid region header name {0:?}")]
    Header(String),
}

/// Server-side region resolution; `None` means "fall back to the envelope". Every source gives
/// the same normal form (`qoe_schemas::validate::normalize_dimension`): trimmed, lower-case.
/// GeoIP gives a country; `country_regions` maps countries to the operator's regions, so that
/// "region" means the same thing whatever its source (an unmapped country stays its ISO code).
pub struct RegionResolver {
    header: Option<axum::http::HeaderName>,
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
    country_regions: std::collections::HashMap<String, String>,
}

const MAX_REGION_LEN: usize = 64;

impl RegionResolver {
    pub fn new(header: Option<&str>, geoip_db: Option<&Path>) -> Result<Self, RegionError> {
        Self::with_country_regions(header, geoip_db, &[])
    }

    /// As [`RegionResolver::new`], with GeoIP countries mapped to regions (`("jp",
    /// "ap-northeast")`; both sides normalised).
    pub fn with_country_regions(
        header: Option<&str>,
        geoip_db: Option<&Path>,
        country_regions: &[(String, String)],
    ) -> Result<Self, RegionError> {
        let header = header
            .map(|h| {
                axum::http::HeaderName::try_from(h).map_err(|_| RegionError::Header(h.to_owned()))
            })
            .transpose()?;
        let geoip = geoip_db
            .map(|path| {
                maxminddb::Reader::open_readfile(path).map_err(|source| RegionError::Open {
                    path: path.display().to_string(),
                    source,
                })
            })
            .transpose()?;
        let country_regions = country_regions
            .iter()
            .map(|(c, r)| (normalize_dimension(c), normalize_dimension(r)))
            .collect();
        Ok(RegionResolver {
            header,
            geoip,
            country_regions,
        })
    }

    /// The region of a client. The edge header is believed only when the peer that sent the
    /// request is one of the trusted proxies (anyone else could set it); then GeoIP.
    pub fn resolve(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
        peer_trusted: bool,
    ) -> Option<String> {
        if let Some(name) = self.header.as_ref().filter(|_| peer_trusted) {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                let value = value.trim();
                if !value.is_empty()
                    && value.len() <= MAX_REGION_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Some(normalize_dimension(value));
                }
            }
        }
        let reader = self.geoip.as_ref()?;
        let country: maxminddb::geoip2::Country = reader.lookup(client).ok()??;
        let code = normalize_dimension(country.country.and_then(|c| c.iso_code)?);
        Some(self.country_regions.get(&code).cloned().unwrap_or(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "198.51.100.7".parse().unwrap();
        let h = headers(&["203.0.113.9, 10.9.9.9"]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client cannot spoof its address by sending the header itself.
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
        // Spoofed entries left of the first untrusted hop are ignored.
        let h = headers(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last good hop.
        let h = headers(&["nonsense"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        assert_eq!(client_ip(peer, &HeaderMap::new(), &[]), peer);
    }

    #[test]
    fn forwarding_headers_with_ports_unknown_and_the_standard_header() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip(peer, &headers(&["203.0.113.9:4711, 10.9.9.9"]), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer, &headers(&["[2001:db8::7]:443"]), &trusted),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(peer, &headers(&["203.0.113.9, unknown"]), &trusted),
            peer
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\""),
        );
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8:cafe::17"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=_hidden, for=10.0.0.9"),
        );
        assert_eq!(client_ip(peer, &h, &trusted), ip("10.0.0.9"));
        // Forwarded wins over X-Forwarded-For.
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("For=198.51.100.2"),
        );
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.2"));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("1.2.3.4:x"), None);
    }

    #[test]
    fn edge_header_is_sanitised() {
        let r = RegionResolver::new(Some("x-edge-region"), None).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-edge-region", HeaderValue::from_static("EU-West"));
        assert_eq!(r.resolve(ip, &h, true).as_deref(), Some("eu-west"));
        assert_eq!(
            r.resolve(ip, &h, false),
            None,
            "only trusted peers set the region"
        );
        h.insert("x-edge-region", HeaderValue::from_static("bad region!"));
        assert_eq!(r.resolve(ip, &h, true), None);
        assert_eq!(r.resolve(ip, &HeaderMap::new(), true), None);
    }
}
