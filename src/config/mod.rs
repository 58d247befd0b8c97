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

pub use env::*;
use librdkafka::*;
pub use registry::{RawSchemaRegistry, SchemaRegistryConfig};
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

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            value,
            format!("a duration such as `500ms`, `30s`, `5m`, `1h`, `7d` ({e})"),
        )
    })
}

fn positive(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, value)?;
    if d.is_zero() {
        return Err(invalid(key, value, "a duration greater than zero"));
    }
    Ok(d)
}

/// Parses a size such as `512MiB`, `2GiB` or `2GB` (binary and decimal units).
fn bytes(key: &str, value: &str) -> Result<u64, ConfigError> {
    let allowed =
        "a size such as `512MiB`, `2GiB` or `2GB` (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number.parse().map_err(|_| invalid(key, value, allowed))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(invalid(key, value, allowed)),
    };
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .ok_or_else(|| invalid(key, value, allowed))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses a window list entry: `W` (buckets of W/60) or `W/b` (explicit bucket size).
fn window(value: &str) -> Result<WindowSpec, ConfigError> {
    let allowed = "windows like `5m`, `1h`, `7d`, optionally with a bucket size `1h/30s`; \
                   the bucket must divide the window";
    let (w, b) = match value.split_once('/') {
        Some((w, b)) => (w, Some(b)),
        None => (value, None),
    };
    let length =
        humantime::parse_duration(w.trim()).map_err(|_| invalid("windows", value, allowed))?;
    let length_ms = ms(length);
    if length_ms < 1_000 {
        return Err(invalid("windows", value, "windows of at least 1s"));
    }
    let bucket_ms =
        match b {
            Some(b) => ms(humantime::parse_duration(b.trim())
                .map_err(|_| invalid("windows", value, allowed))?),
            None if length_ms % 60 != 0 => {
                return Err(invalid(
                    "windows",
                    value,
                    "a window whose default bucket (the window / 60) is a whole number of \
                     milliseconds, or an explicit bucket that divides it, e.g. `1s/100ms`",
                ));
            }
            None => length_ms / 60,
        };
    if bucket_ms <= 0 || length_ms % bucket_ms != 0 {
        return Err(invalid("windows", value, allowed));
    }
    Ok(WindowSpec {
        name: w.trim().to_string(),
        length_ms,
        bucket_ms,
    })
}

/// What Kafka allows as a topic name (`kafka.common.internals.Topic`).
fn topic_name(key: &str, t: &str) -> Result<(), ConfigError> {
    let legal = (1..=249).contains(&t.len())
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(invalid(
            key,
            t,
            "a Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`",
        ))
    }
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

    /// Pure validation; every error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "bootstrap_servers",
                &self.bootstrap_servers,
                "`host:port[,host:port...]`",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid(
                "group_id",
                &self.group_id,
                "a non-empty consumer group id",
            ));
        }
        if self.input_topics.is_empty() {
            return Err(invalid("input_topics", "", "at least one topic"));
        }
        for (i, t) in self.input_topics.iter().enumerate() {
            topic_name("input_topics", t)?;
            if self.input_topics[..i].contains(t) {
                return Err(invalid(
                    "input_topics",
                    self.input_topics.join(","),
                    format!("distinct topics (`{t}` is listed twice)"),
                ));
            }
        }
        let outputs = [
            ("snapshot_topic", &self.snapshot_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("checkpoint_topic", &self.checkpoint_topic),
            ("customer_risk_topic", &self.customer_risk_topic),
        ];
        for (i, (key, t)) in outputs.iter().enumerate() {
            topic_name(key, t)?;
            if self.input_topics.contains(t) {
                return Err(invalid(key, t, "a topic that is not also an input topic"));
            }
            // Each output holds one kind of record (the checkpoint topic is read back
            // on restore): two outputs in one topic would mix them.
            if let Some((other, _)) = outputs[..i].iter().find(|(_, o)| o == t) {
                return Err(invalid(
                    key,
                    t,
                    format!("a topic of its own (`{other}` is the same topic)"),
                ));
            }
        }
        let mut schema_ids = BTreeMap::new();
        for (id, path) in &self.schema_ids {
            let n: u32 = id.parse().map_err(|_| {
                invalid(
                    &format!("schema_ids.{id}"),
                    id,
                    "a schema id (0..4294967295)",
                )
            })?;
            schema_ids.insert(n, PathBuf::from(path));
        }
        let schema_registry = self.schema_registry.validate()?;
        for t in self.topic_schemas.keys() {
            if !self.input_topics.contains(t) {
                return Err(invalid(
                    &format!("topic_schemas.{t}"),
                    t,
                    format!("one of the input_topics {:?}", self.input_topics),
                ));
            }
        }
        if self.windows.is_empty() {
            return Err(invalid("windows", "", "at least one window, e.g. `5m,1h`"));
        }
        let windows = self
            .windows
            .iter()
            .map(|w| window(w))
            .collect::<Result<Vec<_>, _>>()?;
        // The order is kept (it is the order of the output); a length given twice, under
        // one name or two (`1h`, `60m`), would publish the same window twice.
        for (i, w) in windows.iter().enumerate() {
            if let Some(j) = windows[..i].iter().position(|o| o.length_ms == w.length_ms) {
                let (a, b) = (self.windows[j].trim(), self.windows[i].trim());
                return Err(invalid(
                    "windows",
                    self.windows.join(","),
                    if a == b {
                        format!("distinct windows (`{a}` is listed twice)")
                    } else {
                        format!("distinct windows (`{a}` and `{b}` have the same length)")
                    },
                ));
            }
        }
        let lateness = duration("allowed_lateness", &self.allowed_lateness)?;
        let shortest = windows
            .iter()
            .min_by_key(|w| w.length_ms)
            .expect("at least one window");
        if ms(lateness) > shortest.length_ms {
            return Err(invalid(
                "allowed_lateness",
                &self.allowed_lateness,
                format!(
                    "a duration no longer than the shortest of `windows`, `{}`",
                    shortest.name
                ),
            ));
        }
        for (table, props) in [
            ("kafka", &self.kafka),
            ("kafka_consumer", &self.kafka_consumer),
            ("kafka_producer", &self.kafka_producer),
        ] {
            librdkafka_properties(table, props)?;
        }
        sasl_mechanism_built(
            &self.kafka,
            [
                ("kafka_consumer", &self.kafka_consumer),
                ("kafka_producer", &self.kafka_producer),
            ],
        )?;
        let skew = duration("max_clock_skew", &self.max_clock_skew)?;
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                &self.listen,
                "an address like `127.0.0.1:9898` or `0.0.0.0:9898`",
            )
        })?;
        let churn_horizon = ms(positive("churn_horizon", &self.churn_horizon)?);
        let currency = self.currency.trim();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "currency",
                &self.currency,
                "an ISO 4217 code such as `EUR` or `USD`",
            ));
        }
        let model = match self.model.as_str() {
            "mbg_nbd" => crate::model::Model::MbgNbd,
            "bg_nbd" => crate::model::Model::BgNbd,
            other => return Err(invalid("model", other, "`mbg_nbd` (default) or `bg_nbd`")),
        };
        for (key, v) in [
            ("risk_threshold", self.risk_threshold),
            ("risk_delta", self.risk_delta),
        ] {
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                return Err(invalid(key, v, "a probability between 0 and 1"));
            }
        }
        if self.max_dimension_values == 0 {
            return Err(invalid("max_dimension_values", 0, "at least 1"));
        }
        if self.max_label_values < self.max_dimension_values {
            return Err(invalid(
                "max_label_values",
                self.max_label_values,
                format!(
                    "at least max_dimension_values ({}): a partition names the values \
                     top-N is chosen from",
                    self.max_dimension_values
                ),
            ));
        }
        let max_memory = match self.max_memory.trim() {
            "" => None,
            v => Some(bytes("max_memory", v)?),
        };
        let (max_output_in_flight, max_output_in_flight_bytes) = self.output_bounds()?;
        let state_ttl = match self.state_ttl.trim() {
            "" | "off" => None,
            v => {
                let ttl = ms(positive("state_ttl", v)?);
                let longest = windows.iter().map(|w| w.length_ms).max().unwrap_or(0);
                let least = longest.max(churn_horizon) + ms(lateness);
                if ttl < least {
                    return Err(invalid(
                        "state_ttl",
                        v,
                        format!(
                            "`off` or at least {}s: the longest of `windows` and \
                             `churn_horizon`, plus `allowed_lateness`",
                            least / 1000
                        ),
                    ));
                }
                Some(ttl)
            }
        };
        let config = Config {
            bootstrap_servers: self.bootstrap_servers.clone(),
            group_id: self.group_id.clone(),
            input_topics: self.input_topics.clone(),
            snapshot_topic: self.snapshot_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            checkpoint_topic: self.checkpoint_topic.clone(),
            customer_risk_topic: self.customer_risk_topic.clone(),
            max_memory,
            model_refit_interval: positive("model_refit_interval", &self.model_refit_interval)?,
            kafka: self.kafka.clone(),
            kafka_consumer: self.kafka_consumer.clone(),
            kafka_producer: self.kafka_producer.clone(),
            schema_ids,
            topic_schemas: self
                .topic_schemas
                .iter()
                .map(|(t, p)| (t.clone(), PathBuf::from(p)))
                .collect(),
            schema_registry,
            core: CoreConfig {
                windows,
                allowed_lateness_ms: ms(lateness),
                session_timeout_ms: ms(positive("session_timeout", &self.session_timeout)?),
                dedup_window_ms: ms(positive("dedup_window", &self.dedup_window)?),
                max_dimension_values: self.max_dimension_values,
                max_label_values: self.max_label_values,
                email_dedup_ttl_ms: ms(positive("email_dedup_ttl", &self.email_dedup_ttl)?),
                attribution_window_ms: ms(positive(
                    "attribution_window",
                    &self.attribution_window,
                )?),
                churn_horizon_ms: churn_horizon,
                state_ttl_ms: state_ttl,
                input_topics: self.input_topics.clone(),
                model,
                model_sample_size: self.model_sample_size,
                risk_threshold: self.risk_threshold,
                risk_delta: self.risk_delta,
                currency: currency.to_string(),
            },
            idle_timeout: positive("idle_timeout", &self.idle_timeout)?,
            max_clock_skew: (!skew.is_zero()).then_some(skew),
            snapshot_interval: positive("snapshot_interval", &self.snapshot_interval)?,
            shutdown_timeout: positive("shutdown_timeout", &self.shutdown_timeout)?,
            statistics_interval: positive("statistics_interval", &self.statistics_interval)?,
            checkpoint_interval: positive("checkpoint_interval", &self.checkpoint_interval)?,
            restore_timeout: positive("restore_timeout", &self.restore_timeout)?,
            listen,
            max_output_in_flight,
            max_output_in_flight_bytes,
        };
        if let Some(limit) = config.max_memory {
            let task = crate::state::memory::fixed_bytes_per_task(&config.core);
            if task > limit {
                return Err(invalid(
                    "max_memory",
                    &self.max_memory,
                    format!(
                        "at least {task} bytes: one task's window rings and distinct counters \
                         need that much with these `windows`, `allowed_lateness` and \
                         `churn_horizon` (coarser buckets, e.g. `30d/12h`, need less)"
                    ),
                ));
            }
        }
        Ok(config)
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
