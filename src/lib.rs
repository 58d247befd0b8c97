//! engaged: a streaming sidecar that turns Avro customer events from Kafka into
//! engagement and retention metrics (see `../shared/SPEC.md`).

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod demo;
pub mod event;
pub mod http;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod registry;
pub mod replay;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod time;
pub mod window;
