//! The `[schema_registry]` table: where the Confluent Schema Registry is, how long and how often to ask it.
//!
//! Read like every key (file, `ENGAGED_SCHEMA_REGISTRY__<KEY>` variables, never
//! flags), validated purely by [`RawSchemaRegistry::validate`]; the password may come
//! from `password_file`, read when loading ([`RawSchemaRegistry::read_password_file`]).
//! The password and user name are never shown: not in errors, not in `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ConfigError, duration, invalid, librdkafka::secret_file, positive};

/// The table's name, as a key and in `ENGAGED_SCHEMA_REGISTRY__<KEY>` variables.
pub const REGISTRY_TABLE: &str = "schema_registry";

/// Longest a lookup may take with all its retries: the consumer loop waits for it,
/// and librdkafka's `max.poll.interval.ms` (300 s by default) evicts a member
/// whose loop stops polling for longer.
pub const MAX_LOOKUP_WAIT: Duration = Duration::from_secs(120);

/// Longest pause between two attempts, however many retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// `[schema_registry]` as read. Empty `url`: no registry (Confluent ids come from
/// `schema_ids` only).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSchemaRegistry {
    /// Base URL, `http://host:port` or `https://host:port[/path]`.
    pub url: String,
    /// Longest one HTTP request may take (connecting included).
    pub timeout: String,
    /// Retries of a lookup after a connection error, a time-out, a 5xx or a 429.
    #[serde(deserialize_with = "count")]
    pub max_retries: u32,
    /// Pause before the first retry, doubled for each next one (at most 10 s).
    pub backoff: String,
    /// How long a failed lookup is remembered: records with that id are
    /// dead-lettered at once meanwhile, without asking again. `0s`: not remembered.
    pub negative_cache_ttl: String,
    /// HTTP basic authentication user (with `password` or `password_file`).
    pub username: String,
    pub password: String,
    /// A file holding the password (read at start-up).
    pub password_file: String,
    /// PEM file of CA certificates trusted for an `https://` URL, besides the system's.
    pub ca_file: String,
}

impl Default for RawSchemaRegistry {
    fn default() -> Self {
        RawSchemaRegistry {
            url: String::new(),
            timeout: "5s".into(),
            max_retries: 3,
            backoff: "200ms".into(),
            negative_cache_ttl: "30s".into(),
            username: String::new(),
            password: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
        }
    }
}

impl std::fmt::Debug for RawSchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "(hidden)" };
        f.debug_struct("RawSchemaRegistry")
            .field("url", &shown_url(&self.url))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("negative_cache_ttl", &self.negative_cache_ttl)
            .field("username", &hidden(&self.username))
            .field("password", &hidden(&self.password))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A count from a number (TOML) or a string (an `ENGAGED_*` variable).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct Count;
    impl serde::de::Visitor<'_> for Count {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number, 0 or more")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(Count)
}

/// A secret string: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(hidden)")
    }
}

/// HTTP basic authentication for the registry; its `Debug` shows neither part.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: Secret,
    pub password: Secret,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth((hidden))")
    }
}

/// The validated `[schema_registry]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaRegistryConfig {
    /// Base URL without a trailing `/` (no credentials in it).
    pub url: String,
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff: Duration,
    pub negative_cache_ttl: Duration,
    pub auth: Option<BasicAuth>,
    pub ca_file: Option<PathBuf>,
}

impl SchemaRegistryConfig {
    /// Pause before retry `n` (0-based): `backoff` × 2ⁿ, at most [`MAX_BACKOFF`].
    pub fn backoff_before(&self, retry: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << retry.min(20))
            .min(MAX_BACKOFF)
    }

    /// The longest one lookup can take: every attempt timing out, every pause.
    pub fn worst_case_wait(&self) -> Duration {
        let attempts = self.timeout.saturating_mul(self.max_retries + 1);
        (0..self.max_retries).fold(attempts, |t, n| t.saturating_add(self.backoff_before(n)))
    }
}

/// A URL as shown in messages: with credentials in it, nothing of it.
fn shown_url(url: &str) -> String {
    if url.contains('@') {
        "(hidden: it holds credentials)".into()
    } else {
        url.to_string()
    }
}

const KEY_URL: &str = "schema_registry.url";

impl RawSchemaRegistry {
    /// Replaces `password_file` by `password`, read from that file (trailing line
    /// break removed). Errors name the key and the path, never the content.
    pub fn read_password_file(&mut self) -> Result<(), ConfigError> {
        if self.password_file.is_empty() {
            return Ok(());
        }
        let key = "schema_registry.password_file";
        if !self.password.is_empty() {
            return Err(invalid(
                key,
                &self.password_file,
                "either `schema_registry.password` or `schema_registry.password_file`, not both",
            ));
        }
        self.password = secret_file(key, "schema_registry.password", &self.password_file)?;
        self.password_file.clear();
        Ok(())
    }

    /// Pure validation: `None` when no `url` is set (and nothing else either).
    pub fn validate(&self) -> Result<Option<SchemaRegistryConfig>, ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            if *self != RawSchemaRegistry::default() {
                return Err(invalid(
                    KEY_URL,
                    "",
                    "a URL such as `http://schema-registry:8081`: the other `schema_registry` \
                     keys are set, and they need it",
                ));
            }
            return Ok(None);
        }
        let allowed = "an http:// or https:// URL such as `http://schema-registry:8081`";
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| invalid(KEY_URL, shown_url(url), format!("{allowed} ({e})")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                KEY_URL,
                shown_url(url),
                "a URL without credentials: set `schema_registry.username` and \
                 `schema_registry.password` (or `password_file`) instead",
            ));
        }
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(KEY_URL, url, allowed));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                KEY_URL,
                url,
                format!("{allowed}, without a `?query` or `#fragment`"),
            ));
        }
        let max_retries = self.max_retries;
        if max_retries > 10 {
            return Err(invalid(
                "schema_registry.max_retries",
                max_retries,
                "0 to 10 retries",
            ));
        }
        let auth = match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => None,
            (false, false) => Some(BasicAuth {
                username: Secret::new(&self.username),
                password: Secret::new(&self.password),
            }),
            (true, false) => {
                return Err(invalid(
                    "schema_registry.username",
                    "",
                    "a user name: `schema_registry.password` is set, and basic authentication \
                     needs both",
                ));
            }
            (false, true) => {
                return Err(invalid(
                    "schema_registry.password",
                    "",
                    "a password (or `password_file`): `schema_registry.username` is set, and \
                     basic authentication needs both",
                ));
            }
        };
        if !self.password_file.is_empty() {
            return Err(invalid(
                "schema_registry.password_file",
                &self.password_file,
                "a file read when the configuration is loaded (RawConfig::load)",
            ));
        }
        let ca_file = match self.ca_file.trim() {
            "" => None,
            _ if parsed.scheme() != "https" => {
                return Err(invalid(
                    "schema_registry.ca_file",
                    &self.ca_file,
                    "no CA file with an http:// `schema_registry.url` (it is for https://)",
                ));
            }
            path => Some(PathBuf::from(path)),
        };
        let config = SchemaRegistryConfig {
            url: url.trim_end_matches('/').to_string(),
            timeout: positive("schema_registry.timeout", &self.timeout)?,
            max_retries,
            backoff: positive("schema_registry.backoff", &self.backoff)?,
            negative_cache_ttl: duration(
                "schema_registry.negative_cache_ttl",
                &self.negative_cache_ttl,
            )?,
            auth,
            ca_file,
        };
        let wait = config.worst_case_wait();
        if wait > MAX_LOOKUP_WAIT {
            return Err(invalid(
                "schema_registry.max_retries",
                max_retries,
                format!(
                    "fewer retries, or a shorter `timeout` or `backoff`: a lookup could hold the \
                     consumer loop {}s ((1 + max_retries) × timeout + the pauses), and at most \
                     {}s are allowed (librdkafka's `max.poll.interval.ms` evicts a consumer \
                     that stops polling)",
                    wait.as_secs(),
                    MAX_LOOKUP_WAIT.as_secs()
                ),
            ));
        }
        Ok(Some(config))
    }
}
