//! ClickHouse connection settings and server-version detection.
//!
//! Old servers (the 18.x series some distributions ship) need the client's legacy mode: no
//! schema validation (it sends a setting they reject) and no LZ4 transport compression (we saw
//! SELECTs come back empty without an error). Current servers get both. The version is
//! probed once, at connection time, with the legacy settings, which every server accepts.

use clickhouse::{Client, Compression};
use qoe_schemas::migrations::ServerVersion;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ClickHouse at {url} is unreachable or failed: {source}")]
    Unreachable {
        url: String,
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse at {url} reported an unparseable version {version:?}")]
    BadVersion { url: String, version: String },
    #[error("ClickHouse query failed: {0}")]
    Query(#[from] clickhouse::error::Error),
    #[error("invalid database name {0:?} (letters, digits and _ only)")]
    BadDatabase(String),
}

/// A `--clickhouse-shards` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShardSpecError {
    #[error(
        "shard {shard}: {url:?} is not an http(s) URL (expected e.g. \
         http://a:8123,http://b:8123;http://c:8123,http://d:8123)"
    )]
    NotUrl { shard: usize, url: String },
    #[error("{0} is listed twice")]
    Twice(String),
}

/// `--clickhouse-shards`: shards separated by `;`, the replicas of a shard by `,`, each an
/// HTTP(S) URL: `http://a:8123,http://b:8123;http://c:8123,http://d:8123`.
pub fn parse_shards(spec: &str) -> Result<Vec<Vec<String>>, ShardSpecError> {
    let mut shards = Vec::new();
    for (s, shard) in spec.split(';').enumerate() {
        let mut replicas = Vec::new();
        for url in shard.split(',').map(str::trim) {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                return Err(ShardSpecError::NotUrl {
                    shard: s + 1,
                    url: url.to_owned(),
                });
            }
            if shards
                .iter()
                .flatten()
                .chain(replicas.iter())
                .any(|u: &String| u == url)
            {
                return Err(ShardSpecError::Twice(url.to_owned()));
            }
            replicas.push(url.to_owned());
        }
        shards.push(replicas);
    }
    Ok(shards)
}

/// A connected ClickHouse: a client configured for the server's version.
#[derive(Clone)]
pub struct Store {
    pub client: Client,
    pub version: ServerVersion,
    pub config: StoreConfig,
}

fn base_client(config: &StoreConfig) -> Client {
    let mut client = Client::default().with_url(&config.url);
    if !config.user.is_empty() {
        client = client.with_user(&config.user);
    }
    if !config.password.is_empty() {
        client = client.with_password(&config.password);
    }
    client
}

fn legacy(client: Client) -> Client {
    client
        .with_validation(false)
        .with_compression(Compression::None)
}

/// Database names are interpolated into DDL, so they are restricted to plain identifiers.
pub fn is_valid_database(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl Store {
    /// Probes the server version; creates the database when `create_database` is set.
    pub async fn connect(config: StoreConfig, create_database: bool) -> Result<Store, StoreError> {
        if !is_valid_database(&config.database) {
            return Err(StoreError::BadDatabase(config.database.clone()));
        }
        let probe = legacy(base_client(&config));
        let raw: String = probe
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|source| StoreError::Unreachable {
                url: config.url.clone(),
                source,
            })?;
        let version = ServerVersion::parse(&raw).ok_or_else(|| StoreError::BadVersion {
            url: config.url.clone(),
            version: raw.clone(),
        })?;
        if create_database {
            probe
                .query(&format!(
                    "CREATE DATABASE IF NOT EXISTS {}",
                    config.database
                ))
                .execute()
                .await?;
        }
        Ok(Store::assume(config, version))
    }

    /// A store for a server of known version, without contacting it: the replicas of a
    /// cluster run the version of the server probed first, and one that is down at start-up
    /// must not hold the others up.
    pub fn assume(config: StoreConfig, version: ServerVersion) -> Store {
        let mut client = base_client(&config).with_database(&config.database);
        if version.is_legacy() {
            client = legacy(client);
        }
        Store {
            client,
            version,
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_valid_database, parse_shards, ShardSpecError};

    #[test]
    fn shard_lists() {
        assert_eq!(
            parse_shards("http://a:1,http://b:1;http://c:1, http://d:1").unwrap(),
            vec![
                vec!["http://a:1".to_owned(), "http://b:1".to_owned()],
                vec!["http://c:1".to_owned(), "http://d:1".to_owned()]
            ]
        );
        assert_eq!(parse_shards("http://a:1").unwrap().len(), 1);
        assert!(matches!(
            parse_shards(""),
            Err(ShardSpecError::NotUrl { shard: 1, .. })
        ));
        assert!(matches!(
            parse_shards("http://a:1;;http://b:1"),
            Err(ShardSpecError::NotUrl { shard: 2, .. })
        ));
        assert!(parse_shards("http://a:1,a:2").is_err());
        let twice = parse_shards("http://a:1;http://a:1").unwrap_err();
        assert!(matches!(twice, ShardSpecError::Twice(_)));
        assert!(twice.to_string().contains("twice"), "{twice}");
    }

    #[test]
    fn database_names() {
        assert!(is_valid_database("qoe"));
        assert!(is_valid_database("qoe_test_42"));
        assert!(!is_valid_database(""));
        assert!(!is_valid_database("1abc"));
        assert!(!is_valid_database("a;DROP TABLE x"));
        assert!(!is_valid_database("a-b"));
    }
}
