//! `ENGAGED_*` environment variables as a figment provider: keys, `__` librdkafka properties, Kubernetes service links.

use super::*;

/// The prefix of configuration environment variables (`ENGAGED_<KEY>`).
pub const ENV_PREFIX: &str = "ENGAGED_";

/// The top-level configuration keys (the fields of [`RawConfig`]).
pub fn config_keys() -> Vec<String> {
    match serde_json::to_value(RawConfig::default()) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => unreachable!("RawConfig serializes to a map of its fields"),
    }
}

/// Whether `name` is one of the variables Kubernetes injects for a Service named
/// `engaged` (service links): `ENGAGED_SERVICE_HOST`, `ENGAGED_SERVICE_PORT[_<NAME>]`,
/// `ENGAGED_PORT` and `ENGAGED_PORT_<PORT>_<PROTOCOL>[_PROTO|_PORT|_ADDR]`.
pub fn is_service_link(name: &str) -> bool {
    let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
        return false;
    };
    let rest = rest.to_ascii_uppercase();
    if rest == "SERVICE_HOST" || rest == "SERVICE_PORT" || rest.starts_with("SERVICE_PORT_") {
        return true;
    }
    if rest == "PORT" {
        return true;
    }
    let Some(port) = rest.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = port.splitn(3, '_');
    let number = parts.next().unwrap_or_default();
    let protocol = parts.next().unwrap_or_default();
    let field = parts.next();
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && matches!(protocol, "TCP" | "UDP" | "SCTP")
        && matches!(field, None | Some("PROTO" | "PORT" | "ADDR"))
}

pub(super) fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// The tables of librdkafka properties; `ENGAGED_<TABLE>__<PROPERTY>` sets one of their
/// properties from the environment, `__` standing for each `.` of the property's name.
pub const KAFKA_TABLES: [&str; 3] = ["kafka", "kafka_consumer", "kafka_producer"];

/// The separator of a table and a property in an environment variable's name
/// (`ENGAGED_KAFKA__SASL__PASSWORD` is `kafka."sasl.password"`), and of the parts of
/// the property's dotted name.
pub const ENV_PROPERTY_SEPARATOR: &str = "__";

/// The suffix of a librdkafka property whose value is read from a file:
/// `"sasl.password_file" = "/run/secrets/kafka-password"` sets `sasl.password`.
pub const FILE_SUFFIX: &str = "_file";

/// One configuration value from the environment.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct EnvKey {
    /// Where it goes: `["kafka", "acks"]`, `["kafka", "sasl.password"]`.
    path: Vec<String>,
    value: String,
    /// Taken as a string as it is (a librdkafka property named with `__`), not parsed
    /// like figment's `Env` (where `123` is a number and `[a]` a list).
    verbatim: bool,
}

/// The `ENGAGED_*` environment variables, split into configuration keys (a figment
/// provider, read like figment's `Env`: values parsed the same way, `.` nests; and
/// librdkafka properties as `ENGAGED_<TABLE>__<PROPERTY>`) and the others, which are
/// ignored. Its `Debug` shows names, never values.
#[derive(Clone, Default, PartialEq)]
pub struct EnvVars {
    keys: Vec<EnvKey>,
    /// Names of the `ENGAGED_*` variables that are not configuration keys.
    pub ignored: Vec<String>,
}

impl std::fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| env_name(&k.path)).collect();
        f.debug_struct("EnvVars")
            .field("keys", &keys)
            .field("ignored", &self.ignored)
            .finish()
    }
}

/// The variable that sets the key at `path`: `ENGAGED_KAFKA.ACKS`, or
/// `ENGAGED_KAFKA__SASL__PASSWORD` for a property named with dots.
pub(super) fn env_name(path: &[impl AsRef<str>]) -> String {
    let upper: Vec<String> = path
        .iter()
        .map(|k| k.as_ref().to_ascii_uppercase())
        .collect();
    match upper.as_slice() {
        [table, key] if table.eq_ignore_ascii_case(super::registry::REGISTRY_TABLE) => {
            format!("{ENV_PREFIX}{table}{ENV_PROPERTY_SEPARATOR}{key}")
        }
        [table, property] if property.contains('.') => format!(
            "{ENV_PREFIX}{table}{ENV_PROPERTY_SEPARATOR}{}",
            property.replace('.', ENV_PROPERTY_SEPARATOR)
        ),
        _ => format!("{ENV_PREFIX}{}", upper.join(".")),
    }
}

/// `kafka__sasl__password` (a lower-cased name without the prefix) as a table of
/// librdkafka properties and the dotted name of the property, `sasl.password`; or
/// `schema_registry__password` as the table and its key, `password`.
pub(super) fn env_property(key: &str) -> Option<(&str, String)> {
    let (table, property) = key.split_once(ENV_PROPERTY_SEPARATOR)?;
    if table == super::registry::REGISTRY_TABLE {
        let plain = !property.is_empty()
            && !property.contains(ENV_PROPERTY_SEPARATOR)
            && !property.contains('.');
        return plain.then(|| (table, property.to_string()));
    }
    let parts: Vec<&str> = property.split(ENV_PROPERTY_SEPARATOR).collect();
    (KAFKA_TABLES.contains(&table) && parts.iter().all(|p| !p.is_empty() && !p.contains('.')))
        .then(|| (table, parts.join(".")))
}

impl EnvVars {
    /// The process environment.
    pub fn from_env() -> EnvVars {
        EnvVars::from_vars(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }))
    }

    /// `(name, value)` pairs; names are matched without regard to case, as figment does.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> EnvVars {
        let known = config_keys();
        let mut out = EnvVars::default();
        for (name, value) in vars {
            let Some(rest) = strip_prefix_ignore_case(name.trim(), ENV_PREFIX) else {
                continue;
            };
            let key = rest.trim().to_ascii_lowercase();
            if key.contains(ENV_PROPERTY_SEPARATOR) {
                match env_property(&key) {
                    Some((table, property)) => out.keys.push(EnvKey {
                        path: vec![table.to_string(), property],
                        value,
                        verbatim: true,
                    }),
                    None => out.ignored.push(name),
                }
                continue;
            }
            let top = key.split('.').next().unwrap_or_default();
            if !key.split('.').any(str::is_empty) && known.iter().any(|k| k == top) {
                out.keys.push(EnvKey {
                    path: key.split('.').map(String::from).collect(),
                    value,
                    verbatim: false,
                });
            } else {
                out.ignored.push(name);
            }
        }
        out.keys.sort();
        out.ignored.sort();
        out
    }

    /// Logs the ignored variables, by name only: their values may be secrets.
    /// Kubernetes service links at debug level, anything else (a typo?) as a warning.
    pub fn log_ignored(&self) {
        for name in &self.ignored {
            if is_service_link(name) {
                tracing::debug!(
                    variable = %name,
                    "ignoring environment variable {name}: a Kubernetes service link, not a configuration key"
                );
            } else {
                tracing::warn!(
                    variable = %name,
                    "ignoring environment variable {name}: not a configuration key (the keys are listed in README.md)"
                );
            }
        }
    }
}

/// Inserts `value` at `path` (`["kafka", "acks"]`), making dicts on the way.
pub(super) fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
            .interpolater(|_: &Profile, k: &[&str]| env_name(k))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for key in &self.keys {
            let value: Value = if key.verbatim {
                Value::from(key.value.clone())
            } else {
                key.value.parse().unwrap_or_else(|e| match e {})
            };
            insert_path(&mut dict, &key.path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}
