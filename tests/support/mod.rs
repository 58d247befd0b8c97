//! Helpers shared by the integration tests (`mod support;` in each test file; the
//! end-to-end suite reaches them through `tests/e2e/support.rs`).
//!
//! - [`cluster`]: librdkafka's in-process mock cluster, owned by a producer.
//! - [`events`]: co-partitioned streams, clock events, records to produce.
//! - [`metrics`]: `/metrics` pages, parsed or read as text.
//! - [`process`]: `engaged` as a child process that cannot outlive its test.
//! - [`registry`]: a small Confluent-compatible Schema Registry on 127.0.0.1.
//! - [`sidecar`]: the sidecar in-process, stopped gracefully even on panic.

#![allow(dead_code)]

pub mod cluster;
pub mod events;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod sidecar;

// Not every test uses every helper.
#[allow(unused_imports)]
pub use cluster::{
    Cluster, OUTPUT_TOPICS, dead_letter_source, engaged_topics, no_initial_rebalance_delay,
    read_topic,
};
#[allow(unused_imports)]
pub use events::{
    EMAIL_TYPES, PURCHASE_TYPES, Rec, SURVEY_KINDS, clock_events, now_ms, partition_of, routed,
    unknown_fingerprint,
};
#[allow(unused_imports)]
pub use metrics::{Metrics, Sample, additive, close, family, sum, summed, value, windowed};
#[allow(unused_imports)]
pub use process::{Engaged, checkpoint_restores, engaged_ok, free_port, http_get};
#[allow(unused_imports)]
pub use registry::TestRegistry;
#[allow(unused_imports)]
pub use sidecar::{Running, fetch, init_tracing, scrape, settle, settle_within};
