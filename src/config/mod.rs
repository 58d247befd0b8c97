//! Configuration: defaults → TOML file → `ENGAGED_*` env → flags, then pure validation.
//!
//! [`RawConfig`] is what serde reads (unknown keys in a file are errors). Of the
//! environment, only `ENGAGED_<KEY>` variables whose key is a configuration key
//! are read ([`EnvVars`]): Kubernetes injects `ENGAGED_PORT`, `ENGAGED_SERVICE_HOST`
//! and more into every pod of a namespace with a Service named `engaged`, and those
//! must not stop start-up. They are logged by name (never by value) and ignored.
//! [`RawConfig::validate`]
//! turns it into a typed [`Config`] without any I/O, and every error is one line naming
//! the key, the value and what is allowed (the properties of the `kafka*` tables are
//! checked by librdkafka's own configuration parser; load errors are reworded in
//! `load_error`). Reading schema files happens later, in
//! [`Config::decoder_config`], where a missing file is also reported by key.
//!
//! Secrets: a librdkafka property is set from the environment as
//! `ENGAGED_<TABLE>__<PROPERTY>` (`__` for each `.`: `ENGAGED_KAFKA__SASL__PASSWORD`),
//! and from a file as `<property>_file` (`"sasl.password_file" = "/run/secrets/x"`, or
//! `ENGAGED_KAFKA__SASL__PASSWORD_FILE`), read by [`RawConfig::read_secret_files`]
//! when loading. Values of secret-looking keys ([`is_secret`]) are never shown: not in
//! errors, not in the `Debug` of [`RawConfig`], [`Config`] or [`EnvVars`].

mod env;
pub mod kafka;
mod librdkafka;
mod load_error;
mod output;
pub mod registry;
mod validate;

pub use env::*;
use librdkafka::*;
pub use registry::{RawSchemaRegistry, SchemaRegistryConfig};
use validate::{bytes, duration, positive};
#[cfg(test)]
mod table_tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize};

use crate::decode::DecoderConfig;
use crate::state::CoreConfig;
use crate::window::WindowSpec;

/// A configuration error, by key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: `{key}` = {value:?}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("invalid configuration: {0}")]
    Load(String),
}

fn invalid(key: &str, value: impl ToString, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// Accepts `["a", "b"]` (TOML) as well as `"a,b"` (env vars, flags).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// Configuration as read, before validation. Keys are documented in README.md. Its
/// `Debug` hides the values of secret-looking librdkafka properties.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Kafka bootstrap servers (`host:port,...`).
    pub bootstrap_servers: String,
    /// Consumer group id; instances with one id share the partitions.
    pub group_id: String,
    /// Input topics (co-partitioned: same partition count, keyed by customer).
    #[serde(deserialize_with = "string_or_list")]
    pub input_topics: Vec<String>,
    pub snapshot_topic: String,
    pub dead_letter_topic: String,
    /// Task state and applied offsets, written every `checkpoint_interval`.
    pub checkpoint_topic: String,
    /// Extra librdkafka properties for every client, e.g. `"security.protocol" = "SSL"`.
    pub kafka: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only (e.g. `session.timeout.ms`).
    pub kafka_consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only (e.g. `compression.type`).
    pub kafka_producer: BTreeMap<String, String>,
    /// Confluent schema id → path of the writer schema (`.avsc`), used without a registry.
    pub schema_ids: BTreeMap<String, String>,
    /// Topic → path of the writer schema for plain (unframed) Avro datums.
    pub topic_schemas: BTreeMap<String, String>,
    /// The Confluent Schema Registry for Confluent-framed records (`schema_ids` override it).
    pub schema_registry: RawSchemaRegistry,
    #[serde(deserialize_with = "string_or_list")]
    pub windows: Vec<String>,
    pub allowed_lateness: String,
    pub idle_timeout: String,
    pub max_clock_skew: String,
    pub dedup_window: String,
    pub session_timeout: String,
    pub snapshot_interval: String,
    pub shutdown_timeout: String,
    pub statistics_interval: String,
    pub checkpoint_interval: String,
    /// Longest time reading the checkpoint topic may take when partitions are assigned.
    pub restore_timeout: String,
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub listen: String,
    /// Top-N values per breakdown label (`site`, `channel`, `campaign`); the rest become `other`.
    pub max_dimension_values: usize,
    /// Values of each label (`site`, `channel`, `page`, `campaign`) one partition's
    /// state names at a time; values seen while it is full count as `other`.
    pub max_label_values: usize,
    /// How long a message's first open/click is remembered (event time).
    pub email_dedup_ttl: String,
    /// Orders this soon after the customer's last email click are attributed to it.
    pub attribution_window: String,
    /// Inactivity after which a customer counts as churned.
    pub churn_horizon: String,
    /// ISO 4217 code of the one currency of Purchase events; others are rejected as `invalid`.
    pub currency: String,
    /// Churn-risk model: `mbg_nbd` (default) or `bg_nbd`.
    pub model: String,
    /// How often the churn model is refitted in the background.
    pub model_refit_interval: String,
    /// Customers a refit uses at most (uniform sample); 0 = all.
    pub model_sample_size: usize,
    /// Churn risk at or above this makes a customer at risk.
    pub risk_threshold: f64,
    /// A customer-risk record is published when the risk moves by more than this.
    pub risk_delta: f64,
    /// Topic of the CustomerRisk records (keyed by customer_id).
    pub customer_risk_topic: String,
    /// Memory the state may use (e.g. `2GiB`); empty: no limit. A configuration whose
    /// fixed per-task state cannot fit is refused at start-up.
    pub max_memory: String,
    /// A customer whose last ORDER is longer ago than this (event time) is forgotten:
    /// its next ORDER is a first ORDER. `off` (default): kept for ever.
    pub state_ttl: String,
    /// Records produced to the output topics (snapshots, customer risks, dead letters)
    /// and not yet acknowledged, at most; at the bound consumption pauses.
    pub max_output_in_flight: usize,
    /// Bytes of those records, at most (e.g. `32MiB`).
    pub max_output_in_flight_bytes: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "engaged".into(),
            input_topics: ["pageviews", "emails", "purchases", "surveys"]
                .map(String::from)
                .to_vec(),
            snapshot_topic: "engagement.snapshots".into(),
            dead_letter_topic: "engagement.dlq".into(),
            checkpoint_topic: "engagement.checkpoints".into(),
            kafka: BTreeMap::new(),
            kafka_consumer: BTreeMap::new(),
            kafka_producer: BTreeMap::new(),
            schema_ids: BTreeMap::new(),
            topic_schemas: BTreeMap::new(),
            schema_registry: RawSchemaRegistry::default(),
            windows: ["5m", "1h", "24h", "7d", "30d"].map(String::from).to_vec(),
            allowed_lateness: "5m".into(),
            idle_timeout: "1m".into(),
            max_clock_skew: "1h".into(),
            dedup_window: "10m".into(),
            session_timeout: "30m".into(),
            snapshot_interval: "5s".into(),
            shutdown_timeout: "30s".into(),
            statistics_interval: "5s".into(),
            checkpoint_interval: "10s".into(),
            restore_timeout: "120s".into(),
            listen: "127.0.0.1:9898".into(),
            max_dimension_values: 20,
            max_label_values: 1_000,
            email_dedup_ttl: "30d".into(),
            attribution_window: "7d".into(),
            churn_horizon: "90d".into(),
            currency: "EUR".into(),
            model: "mbg_nbd".into(),
            model_refit_interval: "10m".into(),
            model_sample_size: 100_000,
            risk_threshold: 0.7,
            risk_delta: 0.1,
            customer_risk_topic: "engagement.customer-risk".into(),
            max_memory: String::new(),
            state_ttl: "off".into(),
            max_output_in_flight: 10_000,
            max_output_in_flight_bytes: "32MiB".into(),
        }
    }
}

/// Validated configuration. Its `Debug` hides the values of secret-looking librdkafka
/// properties.
#[derive(Clone)]
pub struct Config {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub input_topics: Vec<String>,
    pub snapshot_topic: String,
    pub dead_letter_topic: String,
    pub checkpoint_topic: String,
    pub customer_risk_topic: String,
    /// Bytes the state may use (`max_memory`), if limited.
    pub max_memory: Option<u64>,
    pub model_refit_interval: Duration,
    pub kafka: BTreeMap<String, String>,
    pub kafka_consumer: BTreeMap<String, String>,
    pub kafka_producer: BTreeMap<String, String>,
    pub schema_ids: BTreeMap<u32, PathBuf>,
    pub topic_schemas: BTreeMap<String, PathBuf>,
    /// `None`: Confluent ids come from `schema_ids` only.
    pub schema_registry: Option<SchemaRegistryConfig>,
    pub core: CoreConfig,
    pub idle_timeout: Duration,
    /// `None` disables the check (replay).
    pub max_clock_skew: Option<Duration>,
    pub snapshot_interval: Duration,
    pub shutdown_timeout: Duration,
    pub statistics_interval: Duration,
    pub checkpoint_interval: Duration,
    pub restore_timeout: Duration,
    pub listen: SocketAddr,
    /// Output records in flight at most (`max_output_in_flight`).
    pub max_output_in_flight: usize,
    /// Output bytes in flight at most (`max_output_in_flight_bytes`).
    pub max_output_in_flight_bytes: u64,
}

/// A `kafka*` table in a `Debug` output: the values of secret-looking properties
/// ([`is_secret`]) are shown as `(hidden)`.
struct RedactedTable<'a>(&'a str, &'a BTreeMap<String, String>);

impl std::fmt::Debug for RedactedTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.1 {
            if is_secret(&format!("{}.{name}", self.0)) {
                map.entry(name, &format_args!("(hidden)"));
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

/// `Debug` for a configuration struct with `kafka*` tables shown by [`RedactedTable`].
/// Every field is named (no `..`): a new field must be added here to compile.
macro_rules! debug_redacted {
    ($ty:ident { $($field:ident),* $(,)? } tables { $($table:ident),* $(,)? }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $ty { $($field,)* $($table,)* } = self;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), $field))*
                    $(.field(stringify!($table), &RedactedTable(stringify!($table), $table)))*
                    .finish()
            }
        }
    };
}

debug_redacted!(RawConfig {
    bootstrap_servers, group_id, input_topics, snapshot_topic, dead_letter_topic,
    checkpoint_topic, schema_ids, topic_schemas, schema_registry, windows, allowed_lateness,
    idle_timeout,
    max_clock_skew, dedup_window, session_timeout, snapshot_interval, shutdown_timeout,
    statistics_interval, checkpoint_interval, restore_timeout, listen, max_dimension_values,
    max_label_values,
    email_dedup_ttl, attribution_window, churn_horizon, currency, model,
    model_refit_interval, model_sample_size, risk_threshold, risk_delta,
    customer_risk_topic, max_memory, state_ttl, max_output_in_flight, max_output_in_flight_bytes,
} tables { kafka, kafka_consumer, kafka_producer });

debug_redacted!(Config {
    bootstrap_servers, group_id, input_topics, snapshot_topic, dead_letter_topic,
    checkpoint_topic, customer_risk_topic, max_memory, model_refit_interval, schema_ids,
    topic_schemas, schema_registry, core, idle_timeout, max_clock_skew, snapshot_interval,
    shutdown_timeout, statistics_interval, checkpoint_interval, restore_timeout, listen,
    max_output_in_flight, max_output_in_flight_bytes,
} tables { kafka, kafka_consumer, kafka_producer });

/// Whether the value of the configuration key `key` (`kafka.sasl.password`, dotted)
/// looks like a secret: such values are never shown in errors or `Debug` output.
pub fn is_secret(key: &str) -> bool {
    load_error::is_secret(key)
}

impl RawConfig {
    /// Layers defaults, an optional TOML file, `ENGAGED_*` env vars and `overrides` (flags).
    /// Environment variables that are not configuration keys are logged and ignored.
    pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<RawConfig, ConfigError> {
        let env = EnvVars::from_env();
        env.log_ignored();
        RawConfig::load_with_env(file, env, overrides)
    }

    /// [`RawConfig::load`] with the given environment variables instead of the process's.
    pub fn load_with_env(
        file: Option<&Path>,
        env: EnvVars,
        overrides: &impl Serialize,
    ) -> Result<RawConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(invalid("--config", f.display(), "an existing TOML file"));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(env).merge(Serialized::defaults(overrides));
        let mut raw: RawConfig = fig.extract().map_err(|e| load_error::load_error(&fig, e))?;
        raw.read_secret_files()?;
        Ok(raw)
    }

    /// Replaces every `<property>_file` of the `kafka*` tables by `<property>`, set to
    /// the content of the file it names (without its trailing line break): secrets
    /// mounted as files (Kubernetes Secrets, Docker secrets) never enter the
    /// configuration file or the environment. An unreadable or empty file, or the
    /// property also set directly in the same table, stops start-up with one line
    /// naming the key and the path, never the content. A value read from a file is
    /// checked by librdkafka here and never shown in an error, whatever the property's name.
    /// `schema_registry.password_file` likewise sets `schema_registry.password`.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        self.schema_registry.read_password_file()?;
        for (table, props) in [
            ("kafka", &mut self.kafka),
            ("kafka_consumer", &mut self.kafka_consumer),
            ("kafka_producer", &mut self.kafka_producer),
        ] {
            let files: Vec<String> = props
                .keys()
                .filter(|k| k.ends_with(FILE_SUFFIX))
                .cloned()
                .collect();
            for name in files {
                let path = props.remove(&name).unwrap_or_default();
                let key = format!("{table}.{name}");
                let property = &name[..name.len() - FILE_SUFFIX.len()];
                let value = secret_file(&key, property, &path)?;
                if let Err(desc) = librdkafka_value(property, &value)
                    && desc.starts_with("No such configuration property")
                {
                    return Err(ConfigError::Load(format!(
                        "unknown key `{key}`: `{property}` is not a librdkafka property \
                         (librdkafka's CONFIGURATION.md lists them)"
                    )));
                }
                if props.contains_key(property) {
                    return Err(invalid(
                        &key,
                        &path,
                        format!(
                            "either `{table}.{property}` or `{key}`, not both (`{property}` is \
                             also set in `[{table}]`, by the file or an `{ENV_PREFIX}` variable)"
                        ),
                    ));
                }
                if let Err(desc) = librdkafka_value(property, &value) {
                    let desc = if is_value_free(&desc) {
                        desc
                    } else {
                        "librdkafka refuses it".to_string()
                    };
                    return Err(invalid(
                        &key,
                        &path,
                        format!(
                            "a file holding a value of `{property}` that librdkafka accepts \
                             ({desc})"
                        ),
                    ));
                }
                props.insert(property.to_string(), value);
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads the configured writer schema files (the only I/O of configuration).
    pub fn decoder_config(&self) -> Result<DecoderConfig, ConfigError> {
        let read = |key: String, p: &PathBuf| {
            std::fs::read_to_string(p)
                .map_err(|e| invalid(&key, p.display(), format!("a readable .avsc file ({e})")))
        };
        let mut schema_ids = BTreeMap::new();
        for (id, p) in &self.schema_ids {
            schema_ids.insert(*id, read(format!("schema_ids.{id}"), p)?);
        }
        let mut topic_schemas = BTreeMap::new();
        for (t, p) in &self.topic_schemas {
            topic_schemas.insert(t.clone(), read(format!("topic_schemas.{t}"), p)?);
        }
        Ok(DecoderConfig {
            schema_ids,
            topic_schemas,
        })
    }
}

#[cfg(test)]
mod tests;
