//! librdkafka's in-process mock cluster (bound to 127.0.0.1 on random ports).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engaged::demo::generator::topic_of;
use engaged::event::Event;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCoordinator;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use super::events::Rec;

/// The topics `engaged` writes under their default names: snapshots, dead letters and
/// checkpoints.
pub const OUTPUT_TOPICS: [&str; 3] = [
    "engagement.snapshots",
    "engagement.dlq",
    "engagement.checkpoints",
];

/// `inputs` with `partitions` each, and the [`OUTPUT_TOPICS`] with one partition each.
pub fn engaged_topics<'a>(inputs: &[&'a str], partitions: i32) -> Vec<(&'a str, i32)> {
    inputs
        .iter()
        .map(|t| (*t, partitions))
        .chain(OUTPUT_TOPICS.map(|t| (t, 1)))
        .collect()
}

/// Removes the mock's 3 s initial rebalance delay (not exposed by the Rust wrapper).
#[allow(unsafe_code)]
pub fn no_initial_rebalance_delay(producer: &FutureProducer) {
    // SAFETY: the pointer comes from a live client that owns the mock cluster
    // (`test.mock.num.brokers`); the call only sets a mock-cluster option.
    unsafe {
        let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        assert!(!mc.is_null(), "the producer owns a mock cluster");
        rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
    }
}

/// A one-broker mock cluster owned by a producer client (the cluster lives as long as
/// it), without the initial rebalance delay.
pub struct Cluster {
    pub producer: FutureProducer,
    pub bootstrap: String,
}

impl Cluster {
    /// A cluster with `topics` (name, partitions), fed by a producer that sends at once
    /// (`linger.ms` 0).
    pub fn new(topics: &[(&str, i32)]) -> Cluster {
        Cluster::with_producer(&[("linger.ms", "0")], topics)
    }

    /// A cluster with `topics` (name, partitions), fed by a producer with `settings`.
    pub fn with_producer(settings: &[(&str, &str)], topics: &[(&str, i32)]) -> Cluster {
        Cluster::with_brokers(1, settings, topics)
    }

    /// A cluster of `brokers` brokers (ids 1 to `brokers`) with `topics` (name,
    /// partitions), fed by a producer with `settings`.
    pub fn with_brokers(
        brokers: u32,
        settings: &[(&str, &str)],
        topics: &[(&str, i32)],
    ) -> Cluster {
        let mut config = ClientConfig::new();
        config.set("test.mock.num.brokers", brokers.to_string());
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let producer: FutureProducer = config.create().expect("mock cluster producer");
        let bootstrap = {
            let mock = producer
                .client()
                .mock_cluster()
                .expect("test.mock.num.brokers creates a mock cluster");
            for (t, n) in topics {
                mock.create_topic(t, *n, 1).expect("create mock topic");
            }
            mock.bootstrap_servers()
        };
        no_initial_rebalance_delay(&producer);
        assert!(
            bootstrap.split(',').all(|b| b.starts_with("127.0.0.1:")),
            "mock brokers listen on 127.0.0.1 only: {bootstrap}"
        );
        Cluster {
            producer,
            bootstrap,
        }
    }

    /// Produces one record and returns its offset.
    pub async fn send_raw(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> i64 {
        let mut record = FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.producer.send(record, Duration::from_secs(10)).await {
            Ok(d) => {
                assert_eq!(d.partition, partition);
                d.offset
            }
            Err((e, _)) => panic!("produce to {topic}/{partition} failed: {e}"),
        }
    }

    /// Produces one record to an explicit partition and returns its offset.
    pub async fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: impl AsRef<[u8]>,
    ) -> i64 {
        self.send_raw(topic, partition, key, payload.as_ref(), None)
            .await
    }

    /// Produces every record in order without waiting in between, then waits for
    /// every delivery.
    pub async fn produce(&self, records: &[Rec]) {
        self.produce_at(records).await;
    }

    /// [`Cluster::produce`], returning where each record was written: (partition, offset).
    pub async fn produce_at(&self, records: &[Rec]) -> Vec<(i32, i64)> {
        let mut pending = vec![];
        for r in records {
            let mut record = FutureRecord::to(&r.topic)
                .partition(r.partition)
                .key(&r.key)
                .payload(&r.payload);
            if !r.headers.is_empty() {
                let mut headers = OwnedHeaders::new();
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                record = record.headers(headers);
            }
            pending.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        let mut written = Vec::with_capacity(pending.len());
        for d in pending {
            let d = d.await.unwrap().unwrap();
            written.push((d.partition, d.offset));
        }
        self.producer.flush(Duration::from_secs(60)).unwrap();
        written
    }

    /// [`Cluster::produce`] of events to their family's topic, as single-object Avro
    /// keyed by their partition key.
    pub async fn produce_events(&self, events: &[(i32, Event)]) {
        let records: Vec<Rec> = events
            .iter()
            .map(|(p, e)| Rec::event(topic_of(e), *p, e))
            .collect();
        self.produce(&records).await;
    }

    /// Takes the broker down (`true`) or brings it back up.
    pub fn broker_down(&self, down: bool) {
        let mock = self.producer.client().mock_cluster().unwrap();
        if down {
            mock.broker_down(-1).unwrap();
        } else {
            mock.broker_up(-1).unwrap();
        }
    }

    /// Every partition of `topic` (of `partitions`) led by `broker`: set before any
    /// client asks for the topic's metadata.
    pub fn lead(&self, topic: &str, partitions: i32, broker: i32) {
        let mock = self.producer.client().mock_cluster().unwrap();
        for p in 0..partitions {
            mock.partition_leader(topic, p, Some(broker)).unwrap();
        }
    }

    /// `broker` coordinates the consumer group `group`.
    pub fn coordinate(&self, group: &str, broker: i32) {
        let mock = self.producer.client().mock_cluster().unwrap();
        mock.coordinator(MockCoordinator::Group(group.into()), broker)
            .unwrap();
    }

    /// Takes one broker down (`true`) or brings it back up; the others stay.
    pub fn one_broker_down(&self, broker: i32, down: bool) {
        let mock = self.producer.client().mock_cluster().unwrap();
        if down {
            mock.broker_down(broker).unwrap();
        } else {
            mock.broker_up(broker).unwrap();
        }
    }

    /// Every request to `broker` takes `rtt` longer to answer (zero: as fast as it can).
    pub fn round_trip_time(&self, broker: i32, rtt: Duration) {
        let mock = self.producer.client().mock_cluster().unwrap();
        mock.broker_round_trip_time(broker, rtt).unwrap();
    }

    /// The next requests of `api` fail with `errors`, one each.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let mock = self.producer.client().mock_cluster().unwrap();
        mock.request_errors(api, errors);
    }
}

/// Where a dead letter came from: its `engaged.source.topic`, `engaged.source.partition`
/// and `engaged.source.offset` headers; `None` if one is missing or malformed.
pub fn dead_letter_source(m: &OwnedMessage) -> Option<(String, i32, i64)> {
    let headers = m.headers()?;
    let get = |key: &str| {
        (0..headers.count())
            .map(|i| headers.get(i))
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    Some((
        get("engaged.source.topic")?.to_string(),
        get("engaged.source.partition")?.parse().ok()?,
        get("engaged.source.offset")?.parse().ok()?,
    ))
}

/// Reads every record of `topic` (all partitions, up to the current end).
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("test-reader-{topic}"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader consumer");
        let timeout = Duration::from_secs(10);
        let md = c.fetch_metadata(Some(&topic), timeout).expect("metadata");
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        assert!(!partitions.is_empty(), "topic {topic} exists");
        let mut ends = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = c.fetch_watermarks(&topic, p, timeout).expect("watermarks");
            if high > low {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .expect("add partition");
                ends.insert(p, high);
            }
        }
        let mut out = vec![];
        if ends.is_empty() {
            return out;
        }
        c.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ends.is_empty() {
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            match c.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    let (p, o) = (m.partition(), m.offset());
                    out.push(m.detach());
                    if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
                        ends.remove(&p);
                    }
                }
            }
        }
        out
    })
    .await
    .expect("reader thread")
}
