//! Shared helpers of the end-to-end tests: where the stack is, unique names per test,
//! topic and database set-up. The stack itself is started by `scripts/stack.sh start`
//! (`make test` does it); tests fail with a clear message when it is not running.

pub mod mmdb;
pub mod truth;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn kafka_brokers() -> String {
    std::env::var("QOE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The servers of the local cluster (`scripts/cluster.sh`) when a test binary reads through
/// it ([`use_cluster`]); the single server otherwise.
static CLUSTER: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();

/// The local cluster as `scripts/cluster.sh urls` describes it.
pub struct Cluster {
    /// The aggregator's `--clickhouse-shards` value.
    pub spec: String,
    /// `shards[s][r]`: the HTTP URL of replica `r` of shard `s`.
    pub shards: Vec<Vec<String>>,
}

/// Makes this test binary's ClickHouse queries go to the local cluster: to its first server,
/// in the database given (the tests read `<database>_all`, the Distributed tables).
///
/// The first call also takes the cluster for this process, until it exits: these tests kill
/// its servers, and the Python suite, running beside this one, reads through the cluster too
/// (`tests/dashboards`, which takes the same lock, `.stack/cluster/lock`).
pub fn use_cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.stack/cluster");
        let _ = std::fs::create_dir_all(&dir);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .expect("opening .stack/cluster/lock");
        lock.lock().expect("locking .stack/cluster/lock");
        // Held until the process exits.
        std::mem::forget(lock);
        let out = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh"),
        )
        .arg("urls")
        .output()
        .expect("running scripts/cluster.sh urls");
        let spec = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let shards = qoe_aggregator::store::parse_shards(&spec)
            .unwrap_or_else(|e| panic!("scripts/cluster.sh urls printed {spec:?}: {e}"));
        Cluster { spec, shards }
    })
}

/// Restarts the cluster's servers when distributed DDL stalls on one of them
/// (`scripts/cluster.sh heal`): a ZooKeeper outage of an earlier test can leave a server's DDL
/// worker stopped (ClickHouse 18.16). Tests that kill servers call it first.
pub fn heal_cluster() {
    use_cluster();
    let healed = script("cluster.sh", &["heal"]).expect("running scripts/cluster.sh heal");
    assert!(healed.success(), "scripts/cluster.sh heal failed");
}

/// Waits until every replica of the cluster holds every part of every replicated table of
/// `database`, so that a read through the Distributed tables sees all of it whichever replica
/// answers. Every server must be up.
pub async fn sync_replicas(database: &str) {
    for url in clickhouse_servers() {
        let tables = clickhouse_query_at(
            &url,
            database,
            &format!(
                "SELECT name FROM system.tables WHERE database = '{database}' AND engine LIKE 'Replicated%'"
            ),
        )
        .await
        .expect("listing replicated tables");
        for t in tables {
            clickhouse_query_at(
                &url,
                database,
                &format!("SYSTEM SYNC REPLICA {database}.{}", t[0]),
            )
            .await
            .unwrap_or_else(|e| panic!("{url}: SYNC REPLICA {}: {e}", t[0]));
        }
    }
}

/// Every server the tests query: the cluster's, or the single server.
pub fn clickhouse_servers() -> Vec<String> {
    match CLUSTER.get() {
        Some(cluster) => cluster.shards.iter().flatten().cloned().collect(),
        None => vec![clickhouse_url()],
    }
}

pub fn clickhouse_url() -> String {
    if let Some(cluster) = CLUSTER.get() {
        return cluster.shards[0][0].clone();
    }
    std::env::var("QOE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A name no other test run uses: `prefix_<millis>_<random>`.
pub fn unique(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}_{millis}_{:06}", rand::random::<u32>() % 1_000_000)
}

/// Creates a topic for one test (isolation by name, not by restarting the broker).
pub async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&topic], &opts).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach Kafka at {} ({e}); start the stack with scripts/stack.sh start",
            kafka_brokers()
        )
    })?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Path of a workspace binary, built by `cargo build --workspace --bins` (`make test` does it).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; good enough for tests on one machine).
///
/// A port is handed out once per test process: the kernel may give a just-released port to
/// the next `bind(0)`, so two calls in a row (a collector's public and admin listeners) could
/// otherwise get the same port, and the service fails to bind its second listener.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Service {
    pub child: std::process::Child,
    pub name: String,
}

impl Service {
    pub fn spawn(name: &str, args: &[String], envs: &[(&str, String)]) -> Service {
        let mut cmd = std::process::Command::new(binary(name));
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("QOE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Service {
            child,
            name: name.to_owned(),
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        false
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Waits until `url` answers 200, or panics after `timeout`.
pub async fn wait_http_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} not ready within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub partition: i32,
    pub offset: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The events the message carries (one, or a beacon's), whichever format it is in.
    pub fn events(&self) -> Vec<qoe_schemas::QoeEvent> {
        qoe_schemas::message::decode_events(&self.payload).expect("message decodes")
    }
}

/// Every event of `messages`, in their order.
pub fn events_of(messages: &[Received]) -> Vec<qoe_schemas::QoeEvent> {
    messages.iter().flat_map(Received::events).collect()
}

/// Reads every partition of `topic` from the beginning until nothing new arrives for `idle`.
pub async fn read_topic(topic: &str, idle: Duration) -> Vec<Received> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    while let Ok(next) = tokio::time::timeout(idle, consumer.recv()).await {
        let m = next.expect("consume");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            partition: m.partition(),
            offset: m.offset(),
        });
    }
    out
}

/// Runs `scripts/stack.sh <command>` (stop-kafka, start-kafka, stop-clickhouse, ...).
pub fn stack(command: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .status()
        .expect("running scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {command} failed");
}

/// A broker or ClickHouse server of this test process's own, started by `scripts/stack.sh`
/// under `.stack/private/<name>` on free ports, for a test that stops and restarts its server:
/// the shared servers, and the suites that run beside this one, never see that outage.
/// It sets this process's environment (inherited by every service and script the test starts)
/// so that `kafka_brokers()`/`clickhouse_url()` and [`Outage`] name it; one per test binary.
/// Stopped when dropped.
pub struct PrivateServer {
    service: &'static str,
}

impl PrivateServer {
    /// `service` is `kafka` or `clickhouse`.
    pub fn start(service: &'static str) -> PrivateServer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.stack/private")
            .join(service);
        let vars: Vec<(&str, String)> = match service {
            "kafka" => {
                let port = free_port();
                vec![
                    ("QOE_KAFKA_PORT", port.to_string()),
                    ("QOE_KAFKA_BROKERS", format!("127.0.0.1:{port}")),
                ]
            }
            "clickhouse" => {
                let (http, tcp) = (free_port(), free_port());
                vec![
                    ("QOE_CH_HTTP_PORT", http.to_string()),
                    ("QOE_CH_TCP_PORT", tcp.to_string()),
                    ("QOE_CLICKHOUSE_URL", format!("http://127.0.0.1:{http}")),
                ]
            }
            other => panic!("unknown service {other}"),
        };
        // Set before any thread of the test reads the environment (the test's first act).
        std::env::set_var("QOE_STACK_DIR", &dir);
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        stack(&format!("start-{service}"));
        PrivateServer { service }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = script("stack.sh", &[&format!("stop-{}", self.service)]);
    }
}

/// Stops a stack service for the duration of a test and starts it again when dropped, even
/// when the test fails, so later tests find the stack as they expect it.
pub struct Outage {
    script: &'static str,
    start: String,
    active: bool,
}

/// Runs `scripts/<script> <args>`.
fn script(script: &str, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    std::process::Command::new("bash")
        .arg(path)
        .args(args)
        .status()
}

impl Outage {
    /// `service` is `kafka` or `clickhouse`.
    pub fn begin(service: &'static str) -> Outage {
        let (stop, start) = match service {
            "kafka" => ("stop-kafka", "start-kafka"),
            "clickhouse" => ("stop-clickhouse", "start-clickhouse"),
            other => panic!("unknown service {other}"),
        };
        stack(stop);
        Outage {
            script: "stack.sh",
            start: start.to_owned(),
            active: true,
        }
    }

    /// The broker killed with SIGKILL (no chance to flush or close anything) until the outage
    /// ends.
    pub fn kafka_crash() -> Outage {
        stack("kill-kafka");
        Outage {
            script: "stack.sh",
            start: "start-kafka".to_owned(),
            active: true,
        }
    }

    /// A server of the local cluster killed with SIGKILL (`n` in 1..=4), or its ZooKeeper
    /// stopped (`n` = 0), until the outage ends.
    pub fn cluster(n: u8) -> Outage {
        let (stop, start) = match n {
            0 => ("stop-zookeeper".to_owned(), "start-zookeeper".to_owned()),
            n => (format!("kill-replica {n}"), format!("start-replica {n}")),
        };
        let args: Vec<&str> = stop.split(' ').collect();
        let status = script("cluster.sh", &args).expect("running scripts/cluster.sh");
        assert!(status.success(), "scripts/cluster.sh {stop} failed");
        Outage {
            script: "cluster.sh",
            start,
            active: true,
        }
    }

    /// Ends the outage now.
    pub fn end(mut self) {
        let args: Vec<&str> = self.start.split(' ').collect();
        let status = script(self.script, &args).expect("running the stack script");
        assert!(
            status.success(),
            "scripts/{} {} failed",
            self.script,
            self.start
        );
        self.active = false;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.active {
            // Never panic here: this runs while a failed test unwinds.
            let args: Vec<&str> = self.start.split(' ').collect();
            let _ = script(self.script, &args);
        }
    }
}

/// Produces `events` (keyed by view) and returns, per partition, the events in offset order
/// with the next offset after the last one.
pub async fn publish(
    topic: &str,
    events: &[qoe_schemas::QoeEvent],
) -> std::collections::BTreeMap<i32, (Vec<qoe_schemas::QoeEvent>, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(events.len());
    for e in events {
        let payload = e.encode();
        let record = FutureRecord::to(topic)
            .key(e.view_id.as_bytes())
            .payload(&payload);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    let mut placed: std::collections::BTreeMap<i32, Vec<(i64, qoe_schemas::QoeEvent)>> =
        Default::default();
    for (d, e) in deliveries.into_iter().zip(events) {
        let delivery = d
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("delivered");
        placed
            .entry(delivery.partition)
            .or_default()
            .push((delivery.offset, e.clone()));
    }
    placed
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_by_key(|(o, _)| *o);
            let next = v.last().map(|(o, _)| o + 1).unwrap_or(0);
            (p, (v.into_iter().map(|(_, e)| e).collect(), next))
        })
        .collect()
}

/// Runs a statement on the ClickHouse HTTP interface and returns the TSV lines of its result
/// (none for an INSERT or DDL).
/// On the cluster, the first server that answers (tests kill some).
pub async fn clickhouse_query(database: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut last = None;
    for url in clickhouse_servers() {
        match clickhouse_query_at(&url, database, sql).await {
            Ok(rows) => return Ok(rows),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no ClickHouse server")))
}

/// [`clickhouse_query`] on the server at `url`.
pub async fn clickhouse_query_at(
    url: &str,
    database: &str,
    sql: &str,
) -> anyhow::Result<Vec<Vec<String>>> {
    let upper = sql.trim_start().to_ascii_uppercase();
    let returns_rows = ["SELECT", "WITH", "SHOW", "DESC", "EXISTS"]
        .iter()
        .any(|k| upper.starts_with(k));
    let body = if returns_rows {
        format!("{sql} FORMAT TSV")
    } else {
        sql.to_owned()
    };
    let response = reqwest::Client::new()
        .post(format!("{url}/?database={database}"))
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "ClickHouse answered {status}: {text}");
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}

/// Starts an aggregator process for one test's topic and database.
pub fn spawn_aggregator(topic: &str, database: &str, group: &str, extra: &[&str]) -> Service {
    spawn_aggregator_at(topic, database, group, extra).0
}

/// [`spawn_aggregator`], also returning the base URL of its health and metrics listener.
pub fn spawn_aggregator_at(
    topic: &str,
    database: &str,
    group: &str,
    extra: &[&str],
) -> (Service, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = [
        "run",
        "--kafka-brokers",
        &kafka_brokers(),
        "--topic",
        topic,
        "--group",
        group,
        "--clickhouse-url",
        &clickhouse_url(),
        "--clickhouse-database",
        database,
        "--listen",
        &listen,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--flush-interval-ms") {
        args.extend(["--flush-interval-ms".to_owned(), "300".to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    (
        Service::spawn("aggregator", &args, &[]),
        format!("http://{listen}"),
    )
}

/// The sum of a metric's samples (all label sets) in a service's Prometheus text; 0 when
/// absent.
pub async fn metric_sum(base: &str, name: &str) -> f64 {
    let Ok(text) = reqwest::get(format!("{base}/metrics")).await else {
        return 0.0;
    };
    let Ok(text) = text.text().await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.0, which prints as "-0".
        + 0.0
}

/// Kills the aggregator whose metrics listener is `base` with SIGKILL, at a random moment up
/// to 1.5 s after it has written a batch: every kill lands on an instance with work done and
/// state to resume (a bare random sleep may kill one that did nothing, and the test passes
/// without the scenario).
pub async fn kill9_after_a_batch(aggregator: &mut Service, base: &str) {
    use rand::Rng;
    wait_metric(
        base,
        "qoe_aggregator_batches_written_total",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    let pause = rand::rng().random_range(0..1_500);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    aggregator.kill9();
}

/// Waits until the Prometheus metric `name` (summed over its labels) of the service at `base`
/// reaches `value`; returns it. Fails the test after `within`, naming the metric: tests wait on
/// what a service did, not on the clock.
pub async fn wait_metric(base: &str, name: &str, value: f64, within: Duration) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = metric_sum(base, name).await;
        if now >= value {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} of {base} is {now} after {within:?}, want at least {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus text a service serves on `{base}/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body")
}

/// Starts a collector publishing to `topic` on free ports; returns it with the base URLs of
/// its public and admin listeners once it answers `/healthz`.
pub async fn spawn_collector(topic: &str, extra: &[&str]) -> (Service, String, String) {
    let port = free_port();
    let admin_port = free_port();
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--kafka-brokers".into(),
        kafka_brokers(),
        "--topic".into(),
        topic.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let service = Service::spawn("collector", &args, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(20)).await;
    (service, base, admin)
}

/// Where every partition of `topic` ends (the next offset to be written), as the aggregator
/// reads it ([`qoe_aggregator::kafka_check::partition_ends`]). Blocking.
pub fn partition_ends(topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let kafka = qoe_aggregator::kafka_check::KafkaAccess::brokers(&kafka_brokers());
    qoe_aggregator::kafka_check::partition_ends(&kafka, topic)
        .unwrap_or_else(|e| panic!("reading the ends of {topic}: {e:#}"))
        .into_iter()
        .collect()
}

/// [`partition_ends`] of the partitions that hold messages (an empty one gets no checkpoint).
pub fn written_partition_ends(topic: &str) -> std::collections::BTreeMap<i32, i64> {
    partition_ends(topic)
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect()
}

/// Waits until ClickHouse holds checkpoints up to `next` for every partition.
pub async fn wait_caught_up(
    database: &str,
    topic: &str,
    next: &std::collections::BTreeMap<i32, i64>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = clickhouse_query(
            database,
            &format!("SELECT partition, max(next_offset) FROM qoe_checkpoints WHERE topic = '{topic}' GROUP BY partition"),
        )
        .await
        .unwrap_or_default();
        let got: std::collections::BTreeMap<i32, i64> = rows
            .iter()
            .filter_map(|r| Some((r.first()?.parse().ok()?, r.get(1)?.parse().ok()?)))
            .collect();
        if next.iter().all(|(p, n)| got.get(p).is_some_and(|g| g >= n)) {
            return wait_commits_finished(database, topic, timeout).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator did not catch up within {timeout:?}: have {got:?}, want {next:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until no batch commit of `topic` is running on the server. A commit is one INSERT
/// whose rows reach each table through its own materialized view, one view after another:
/// its checkpoint can be visible while rows of later views are still being written.
pub async fn wait_commits_finished(database: &str, topic: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let sql = format!(
        "SELECT count() FROM system.processes WHERE startsWith(query_id, '{}')",
        qoe_aggregator::writer::commit_query_id_prefix(topic)
    );
    loop {
        let mut running = Some(0);
        for url in clickhouse_servers() {
            let here = clickhouse_query_at(&url, database, &sql)
                .await
                .ok()
                .and_then(|r| r.first()?.first()?.parse::<u64>().ok());
            // A cluster server that does not answer (killed by the test) runs nothing.
            let here = here.or(CLUSTER.get().map(|_| 0));
            running = running.zip(here).map(|(a, b)| a + b);
        }
        if running == Some(0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits of {topic} still running after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every metric of every row of a window table, summed per key.
pub async fn window_rows(
    database: &str,
    table: &str,
) -> std::collections::BTreeMap<truth::RowKey, truth::Row> {
    let sums: Vec<String> = truth::METRIC_COLUMNS
        .iter()
        .map(|c| format!("sum({c})"))
        .collect();
    let sql = format!(
        "SELECT toUInt32(window_start), region, cdn, stream_type, platform, stream_id, {} \
         FROM {table} GROUP BY window_start, region, cdn, stream_type, platform, stream_id",
        sums.join(", ")
    );
    clickhouse_query(database, &sql)
        .await
        .expect("window query")
        .into_iter()
        .map(|r| {
            let key = (
                r[0].parse().unwrap(),
                r[1].clone(),
                r[2].clone(),
                r[3].clone(),
                r[4].clone(),
                r[5].clone(),
            );
            let values: Vec<u64> = r[6..].iter().map(|v| v.parse().unwrap()).collect();
            (key, truth::Row::from_values(&values))
        })
        .collect()
}

/// Distinct views per base window and slice.
pub async fn active_views(database: &str) -> std::collections::BTreeMap<truth::RowKey, u64> {
    clickhouse_query(
        database,
        "SELECT toUInt32(window_start), region, cdn, stream_type, platform, stream_id, uniqExactMerge(views) \
         FROM qoe_active_views_10s GROUP BY window_start, region, cdn, stream_type, platform, stream_id",
    )
    .await
    .expect("active views query")
    .into_iter()
    .map(|r| {
        ((r[0].parse().unwrap(), r[1].clone(), r[2].clone(), r[3].clone(), r[4].clone(), r[5].clone()), r[6].parse().unwrap())
    })
    .collect()
}

/// Every window table of `database` equals the expected base-grain rows (10 s, and rolled up
/// to 1 min and 1 h), the distinct views per base window and slice equal `views`, and
/// `qoe_views` holds exactly one row for each of `distinct_views` views.
pub async fn assert_windows_equal(
    database: &str,
    rows: &std::collections::BTreeMap<truth::RowKey, truth::Row>,
    views: &std::collections::BTreeMap<truth::RowKey, u64>,
    distinct_views: u64,
) {
    assert_rows_eq(
        "10 s windows",
        rows,
        &window_rows(database, "qoe_window_10s").await,
    );
    for (name, table, grain) in [
        ("1 min windows", "qoe_window_1m", 60),
        ("1 h windows", "qoe_window_1h", 3600),
    ] {
        assert_rows_eq(
            name,
            &truth::rollup(rows, grain),
            &window_rows(database, table).await,
        );
    }
    assert_rows_eq("active views", views, &active_views(database).await);
    let view_rows = clickhouse_query(
        database,
        "SELECT count(), uniqExact(view_id) FROM qoe_views",
    )
    .await
    .expect("qoe_views query");
    assert_eq!(
        view_rows[0],
        vec![distinct_views.to_string(), distinct_views.to_string()],
        "one summary row per view"
    );
}

/// Asserts two keyed row sets are equal, naming the first differences.
pub fn assert_rows_eq<V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &std::collections::BTreeMap<truth::RowKey, V>,
    actual: &std::collections::BTreeMap<truth::RowKey, V>,
) {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            Some(a) if a == v => {}
            other => diffs.push(format!("{k:?}: expected {v:?}, got {other:?}")),
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("{k:?}: unexpected row {:?}", actual[k]));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} rows differ; first: {:#?}",
        diffs.len(),
        expected.len(),
        &diffs[..diffs.len().min(5)],
    );
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no RSS for pid {pid}"))
}

/// Runs the simulator to completion against `url` with `args`; returns its ground truth and
/// its summary (standard output).
pub async fn simulate(url: &str, args: &[&str]) -> (qoe_simulator::truth::TruthFile, String) {
    let truth_path = std::env::temp_dir().join(format!("{}.json", unique("truth")));
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--url",
            url,
            "--progress-secs",
            "0",
            "--truth-out",
            truth_path.to_str().expect("utf-8 temp path"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("simulator"))
            .args(&args)
            .output()
    })
    .await
    .expect("simulator task")
    .expect("running the simulator");
    assert!(
        output.status.success(),
        "simulator failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let bytes = std::fs::read(&truth_path).expect("truth file");
    let _ = std::fs::remove_file(&truth_path);
    let truth = serde_json::from_slice(&bytes).expect("truth file parses");
    (truth, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every window and slice in ClickHouse equals the truth, at every grain, and one summary row
/// per view; returns the expected base rows.
pub async fn assert_clickhouse_equals(
    database: &str,
    topic: &str,
    truth: &qoe_simulator::truth::TruthFile,
) -> std::collections::BTreeMap<truth::RowKey, truth::Row> {
    // Exactness needs every send to have a known outcome; on a healthy loopback stack it has.
    assert_eq!(
        (truth.unacknowledged_events, truth.uncertain_events),
        (0, 0),
        "every beacon must be acknowledged for the truth to be exact"
    );
    assert_eq!(truth.columns, qoe_simulator::truth::METRIC_COLUMNS);
    let rows: std::collections::BTreeMap<truth::RowKey, truth::Row> = truth
        .rows
        .iter()
        .map(|r| (r.key(), truth::Row::from_values(&r.metrics)))
        .collect();
    // A window holding only late copies of a view's events has no active view.
    let views: std::collections::BTreeMap<truth::RowKey, u64> = truth
        .rows
        .iter()
        .filter(|r| r.active_views > 0)
        .map(|r| (r.key(), r.active_views))
        .collect();
    let late: u64 = rows.values().map(|r| r.get("late_events")).sum();
    assert_eq!(late, 0, "the simulator never sends late");

    // Wait until every acknowledged copy (and logged request) is accounted for in ClickHouse.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = clickhouse_query(
            database,
            "SELECT sum(events) + sum(duplicate_events) + sum(late_events), \
             sum(rm_requests) + sum(rm_duplicate_requests) + sum(rm_late_requests) \
             FROM qoe_window_10s",
        )
        .await
        .ok()
        .and_then(|r| {
            let row = r.first()?;
            Some((
                row.first()?.parse::<u64>().ok()?,
                row.get(1)?.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or((0, 0));
        if (got.0 >= truth.acknowledged_events && got.1 >= truth.acknowledged_requests)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_commits_finished(database, topic, Duration::from_secs(30)).await;
    if let Some(local) = database
        .strip_suffix("_all")
        .filter(|_| CLUSTER.get().is_some())
    {
        sync_replicas(local).await;
    }

    assert_windows_equal(database, &rows, &views, truth.views).await;

    rows
}
