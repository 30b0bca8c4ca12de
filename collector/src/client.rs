//! Who sent a request: the client address (X-Forwarded-For honoured only from trusted
//! proxies) and the server-side region (trusted edge header, else GeoIP database).
//! The address is used for rate limiting and region lookup only; it is never published.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;

/// The client address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in X-Forwarded-For that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut candidate = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { break };
        for part in text.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    candidate = ip;
                    if !is_trusted(&ip) {
                        return ip;
                    }
                }
                Err(_) => return candidate,
            }
        }
    }
    candidate
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

/// Server-side region resolution; `None` means "fall back to the envelope".
pub struct RegionResolver {
    header: Option<axum::http::HeaderName>,
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
}

const MAX_REGION_LEN: usize = 64;

impl RegionResolver {
    pub fn new(header: Option<&str>, geoip_db: Option<&Path>) -> Result<Self, RegionError> {
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
        Ok(RegionResolver { header, geoip })
    }

    pub fn resolve(&self, client: IpAddr, headers: &HeaderMap) -> Option<String> {
        if let Some(name) = &self.header {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                let value = value.trim();
                if !value.is_empty()
                    && value.len() <= MAX_REGION_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return Some(value.to_ascii_lowercase());
                }
            }
        }
        let reader = self.geoip.as_ref()?;
        let country: maxminddb::geoip2::Country = reader.lookup(client).ok()??;
        country
            .country
            .and_then(|c| c.iso_code)
            .map(|code| code.to_ascii_lowercase())
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
    fn edge_header_is_sanitised() {
        let r = RegionResolver::new(Some("x-edge-region"), None).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-edge-region", HeaderValue::from_static("EU-West"));
        assert_eq!(r.resolve(ip, &h).as_deref(), Some("eu-west"));
        h.insert("x-edge-region", HeaderValue::from_static("bad region!"));
        assert_eq!(r.resolve(ip, &h), None);
        assert_eq!(r.resolve(ip, &HeaderMap::new()), None);
    }
}
