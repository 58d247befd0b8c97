//! Validation: the raw settings to a typed [`Config`] without I/O; every error is one line naming key, value and what is allowed.

use super::*;

pub(super) fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            value,
            format!("a duration such as `500ms`, `30s`, `5m`, `1h`, `7d` ({e})"),
        )
    })
}

pub(super) fn positive(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, value)?;
    if d.is_zero() {
        return Err(invalid(key, value, "a duration greater than zero"));
    }
    Ok(d)
}

/// Parses a size such as `512MiB`, `2GiB` or `2GB` (binary and decimal units).
pub(super) fn bytes(key: &str, value: &str) -> Result<u64, ConfigError> {
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

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses a window list entry: `W` (buckets of W/60) or `W/b` (explicit bucket size).
pub(super) fn window(value: &str) -> Result<WindowSpec, ConfigError> {
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
pub(super) fn topic_name(key: &str, t: &str) -> Result<(), ConfigError> {
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
        let Some(shortest) = windows.iter().min_by_key(|w| w.length_ms) else {
            return Err(invalid("windows", "", "at least one window, e.g. `5m,1h`"));
        };
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
