//! Sources: where records come from. Kafka (consumer group) for `run` and `demo`.

pub mod background;
pub mod checkpointer;
pub mod consumer;
pub mod kafka;
pub mod throttle;
