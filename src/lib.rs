//! engaged: a streaming sidecar that turns Avro customer events from Kafka into
//! engagement and retention metrics (see `../shared/SPEC.md`).

pub mod decode;
pub mod demo;
pub mod event;
pub mod metrics;
pub mod snapshot;
pub mod state;
pub mod time;
pub mod window;
pub mod config;
pub mod pipeline;
pub mod telemetry;
pub mod http;
pub mod sink;
pub mod source;
pub mod replay;
pub mod app;
