//! Schema Registry at the edge: before a batch is decoded, the writer schemas of its unknown Confluent ids are looked up and taught to the decoder.
//!
//! The decoder stays sans-I/O (`crate::decode`): this module does the HTTP
//! ([`client`]) and hands what it learnt to the pipeline
//! ([`Pipeline::learn_schema_id`], which swaps in a decoder with one more id). The
//! Kafka edge calls [`SchemaRegistry::prepare`] with every batch; then the batch is
//! decoded as always. For each record framed `0x00` + 4-byte big-endian id whose id
//! the decoder does not know (ids in `schema_ids` are known: the local map overrides
//! the registry), on a topic without a plain writer schema (`topic_schemas`: there a
//! leading `0x00` is usually a union branch, not a frame), the registry is asked —
//! the ids of a batch concurrently, so a batch waits at most one lookup's worst case
//! (`(1 + max_retries) × timeout` + the pauses, at most 120 s by validation).
//!
//! An id whose lookup fails — 404, unreachable after the retries, refused (401…), or
//! a schema engaged cannot use (not Avro, references, not one of our event records,
//! not resolvable against our reader schema) — does not stop anything: the batch's
//! records with that id are dead-lettered as `undecodable` with an error text naming
//! the id and why (`unknown Confluent schema id 7: schema registry http://… answered
//! 404 (40403 Schema 7 not found)`), the lookup is counted in
//! `engaged_schema_registry_lookups_total{outcome}`, and the partition moves on.
//! Failures are remembered for `negative_cache_ttl` (unusable schemas for ever), so a
//! flood of one bad id costs one lookup per that time, and at most
//! [`MAX_LOOKUPS_PER_BATCH`] ids are looked up per batch, so a flood of records that
//! merely start with `0x00` cannot hammer the registry.

pub mod client;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::IntCounterVec;

use crate::config::SchemaRegistryConfig;
use crate::decode::Decoder;
use crate::pipeline::Pipeline;
use crate::telemetry::Telemetry;

pub use client::{Answer, LookupError, RegistryClient, RegistryError};

/// Distinct unknown ids looked up for one batch at most; the batch's records with
/// further unknown ids are dead-lettered without a lookup (a later batch looks
/// them up).
pub const MAX_LOOKUPS_PER_BATCH: usize = 64;

/// How a lookup ended, the `outcome` label of `engaged_schema_registry_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A schema the decoder now reads.
    Found,
    /// 404: the registry has no schema with that id.
    NotFound,
    /// The registry has it, but engaged cannot read it.
    Unusable,
    /// Another 4xx (401, 403, …).
    Refused,
    /// No answer after every retry (connection errors, time-outs, 5xx, 429), or an
    /// answer that was not a schema.
    Unreachable,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Found,
        Outcome::NotFound,
        Outcome::Unusable,
        Outcome::Refused,
        Outcome::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Found => "found",
            Outcome::NotFound => "not_found",
            Outcome::Unusable => "unusable",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
        }
    }

    fn of(e: &LookupError) -> Outcome {
        match e {
            LookupError::NotFound { .. } => Outcome::NotFound,
            LookupError::Refused { .. } => Outcome::Refused,
            LookupError::NotAvro { .. } | LookupError::References { .. } => Outcome::Unusable,
            LookupError::Unreachable { .. } | LookupError::BadAnswer { .. } => Outcome::Unreachable,
        }
    }
}

/// The registry client plus what the decoder could not use.
pub struct SchemaRegistry {
    client: RegistryClient,
    lookups: IntCounterVec,
    /// Ids whose schema the registry has but engaged cannot read, and why: ids
    /// never change their schema, so they are not asked for again.
    unusable: Mutex<HashMap<u32, Arc<str>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// The client for `config`, counting into `telemetry` (connects to nothing yet).
    pub fn new(
        config: &SchemaRegistryConfig,
        telemetry: &Telemetry,
    ) -> Result<SchemaRegistry, RegistryError> {
        let lookups = telemetry.schema_registry_lookups.clone();
        for outcome in Outcome::ALL {
            lookups.with_label_values(&[outcome.as_str()]);
        }
        if config.auth.is_some() && config.url.starts_with("http://") {
            tracing::warn!(
                url = %config.url,
                "the schema registry password is sent unencrypted (basic authentication over http://)"
            );
        }
        Ok(SchemaRegistry {
            client: RegistryClient::new(config)?,
            lookups,
            unusable: Mutex::new(HashMap::new()),
        })
    }

    /// Looks up the unknown Confluent ids of a batch's records (`(topic, value)`) and
    /// teaches the pipeline's decoder those it can read; sets the reasons of the
    /// others for their dead letters ([`Pipeline::set_schema_id_errors`]). Never
    /// fails; waits at most one lookup's worst case.
    pub async fn prepare<'a>(
        &self,
        pipeline: &Pipeline,
        records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) {
        let decoder = pipeline.decoder();
        let mut unknown = BTreeSet::new();
        for (topic, payload) in records {
            let Some(id) = payload.and_then(Decoder::confluent_schema_id) else {
                continue;
            };
            if !decoder.knows_schema_id(id) && !decoder.has_topic_schema(topic) {
                unknown.insert(id);
            }
        }
        drop(decoder);
        let mut errors: HashMap<u32, Arc<str>> = HashMap::new();
        let mut asked = tokio::task::JoinSet::new();
        for (n, id) in unknown.into_iter().enumerate() {
            if let Some(why) = self.unusable_reason(id) {
                errors.insert(id, why);
            } else if n >= MAX_LOOKUPS_PER_BATCH {
                errors.insert(
                    id,
                    Arc::from(format!(
                        "not looked up in the schema registry: more than \
                         {MAX_LOOKUPS_PER_BATCH} unknown schema ids in one batch (are these \
                         records Confluent-framed?); a later batch looks it up"
                    )),
                );
            } else {
                let client = self.client.clone();
                asked.spawn(async move { (id, client.schema(id).await) });
            }
        }
        while let Some(joined) = asked.join_next().await {
            let Ok((id, answer)) = joined else {
                continue; // a lookup task cannot panic; its records stay unknown ids
            };
            if let Some(why) = self.learn(pipeline, id, answer) {
                errors.insert(id, why);
            }
        }
        pipeline.set_schema_id_errors(errors);
    }

    fn unusable_reason(&self, id: u32) -> Option<Arc<str>> {
        self.unusable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Teaches the decoder the schema of `id`, or returns why it cannot.
    fn learn(&self, pipeline: &Pipeline, id: u32, answer: Answer) -> Option<Arc<str>> {
        let url = self.client.url();
        let (outcome, why) = match answer.schema {
            Ok(text) => match pipeline.learn_schema_id(id, &text) {
                Ok(()) => {
                    tracing::info!(schema_id = id, %url, "writer schema learnt from the schema registry");
                    (Outcome::Found, None)
                }
                Err(e) => (
                    Outcome::Unusable,
                    Some(format!(
                        "schema registry {url} returned a schema engaged cannot use: {e}"
                    )),
                ),
            },
            Err(e) => (Outcome::of(&e), Some(e.to_string())),
        };
        if !answer.cached {
            self.lookups.with_label_values(&[outcome.as_str()]).inc();
        }
        let why: Arc<str> = Arc::from(why?);
        if outcome == Outcome::Unusable {
            self.unusable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, why.clone());
        }
        if !answer.cached {
            match outcome {
                Outcome::NotFound => {
                    tracing::debug!(schema_id = id, error = %why, "unknown Confluent schema id: its records are dead-lettered")
                }
                _ => {
                    tracing::warn!(schema_id = id, error = %why, "unknown Confluent schema id: its records are dead-lettered")
                }
            }
        }
        Some(why)
    }
}

#[cfg(test)]
mod tests;
