//! A minimal writer of MaxMind DB files (format 2.0, IPv4, 24-bit records) mapping networks
//! to GeoIP2-Country records, so tests can hand the collector a real `.mmdb` without
//! shipping a commercial database. Format: <https://maxmind.github.io/MaxMind-DB/>.

use std::net::Ipv4Addr;

/// A record of the search tree: another node, nothing, or an offset into the data section.
#[derive(Clone, Copy)]
enum Record {
    Node(usize),
    Empty,
    Data(usize),
}

/// Bytes of a GeoIP2-Country database mapping each network to its ISO country code.
pub fn country_db(networks: &[(Ipv4Addr, u8, &str)]) -> Vec<u8> {
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    let mut data = Vec::new();
    for &(addr, prefix, iso_code) in networks {
        let offset = data.len();
        encode_map(
            &mut data,
            &[("country", Value::Map(&[("iso_code", Value::Str(iso_code))]))],
        );
        let bits = u32::from(addr);
        let mut node = 0;
        for depth in 0..prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == prefix {
                nodes[node][bit] = Record::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Record::Node(n) => n,
                    _ => {
                        nodes.push([Record::Empty; 2]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Record::Node(n);
                        n
                    }
                };
            }
        }
    }

    let node_count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match *record {
                Record::Node(n) => n,
                Record::Empty => node_count,
                Record::Data(offset) => node_count + 16 + offset,
            };
            out.extend_from_slice(&(value as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode_map(
        &mut out,
        &[
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_700_000_000)),
            ("database_type", Value::Str("GeoIP2-Country")),
            ("description", Value::Map(&[("en", Value::Str("test"))])),
            ("ip_version", Value::U16(4)),
            ("languages", Value::Array(&["en"])),
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(24)),
        ],
    );
    out
}

enum Value<'a> {
    Str(&'a str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(&'a [(&'a str, Value<'a>)]),
    Array(&'a [&'a str]),
}

/// Control byte(s) of a field: type in the top 3 bits (types above 7 are "extended": 0 there
/// and `type - 7` in the next byte), size in the low 5 (all sizes here are below 29).
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 29, "sizes above 28 need the long forms");
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn encode_uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode_map(out: &mut Vec<u8>, entries: &[(&str, Value<'_>)]) {
    control(out, 7, entries.len());
    for (key, value) in entries {
        encode_str(out, key);
        match value {
            Value::Str(s) => encode_str(out, s),
            Value::U16(v) => encode_uint(out, 5, u64::from(*v)),
            Value::U32(v) => encode_uint(out, 6, u64::from(*v)),
            Value::U64(v) => encode_uint(out, 9, *v),
            Value::Map(m) => encode_map(out, m),
            Value::Array(items) => {
                control(out, 11, items.len());
                for item in *items {
                    encode_str(out, item);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn the_maxminddb_reader_reads_what_we_write() {
        let bytes = country_db(&[
            (Ipv4Addr::new(203, 0, 113, 0), 24, "JP"),
            (Ipv4Addr::new(198, 51, 100, 0), 24, "BR"),
            (Ipv4Addr::new(10, 0, 0, 0), 8, "DE"),
        ]);
        let reader = maxminddb::Reader::from_source(bytes).expect("valid database");
        let country = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            let c: Option<maxminddb::geoip2::Country> = reader.lookup(ip).unwrap();
            c.and_then(|c| c.country)
                .and_then(|c| c.iso_code)
                .map(str::to_owned)
        };
        assert_eq!(country("203.0.113.9").as_deref(), Some("JP"));
        assert_eq!(country("198.51.100.255").as_deref(), Some("BR"));
        assert_eq!(country("10.200.1.1").as_deref(), Some("DE"));
        assert_eq!(country("192.0.2.1"), None);
        assert_eq!(reader.metadata.database_type, "GeoIP2-Country");
    }
}
