//! One-line messages for what stops loading: an unknown key, a value of the wrong type, a
//! file that is not TOML. figment's own messages say `for key "default.port"`, name
//! serde's types (`untagged enum OneOrMany`) or span several lines (TOML syntax errors);
//! these name the key, where it was set (file, `ENGAGED_*` variable or flag), the value
//! and what is allowed, and hide the values of keys that look like secrets.

use figment::error::{Actual, Kind};
use figment::{Figment, Source};

use super::{ConfigError, config_keys};

/// Parts of key names whose values are never shown in an error or a `Debug` output: they
/// may be secrets (`kafka.sasl.password`, `kafka."ssl.key.pem"`, a misplaced
/// `sasl_password`). They cover every property librdkafka itself treats as sensitive
/// (`sasl.username`, `sasl.oauthbearer.config`, `ssl.keystore.password`…).
const SECRET_WORDS: [&str; 9] = [
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "jaas",
    "key",
    "username",
    "oauthbearer.config",
];

/// Whether the value of `key` (dotted, any level) is hidden in errors.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// How a value is shown in an error: as JSON (strings quoted), or hidden.
pub(super) fn shown(key: &str, value: impl FnOnce() -> String) -> String {
    if is_secret(key) {
        "(hidden)".into()
    } else {
        value()
    }
}

fn actual(a: &Actual) -> String {
    match a {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Bool(v) => v.to_string(),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// Where the value came from: `in /etc/engaged.toml`, `from ENGAGED_WINDOWS`, a flag.
fn origin(e: &figment::Error) -> Option<String> {
    let md = e.metadata.as_ref()?;
    Some(match &md.source {
        Some(Source::File(p)) => format!("in {}", p.display()),
        Some(Source::Code(_)) => "from a command-line flag".into(),
        Some(other) => format!("in {other}"),
        None => match &e.profile {
            Some(profile) if !e.path.is_empty() => {
                format!("from {}", md.interpolate(profile, &e.path))
            }
            _ => format!("from {}", md.name),
        },
    })
}

/// The number of single-character edits between `a` and `b`.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// What an unknown top-level key should have been.
fn unknown_key_allowed(found: &str) -> String {
    let keys = config_keys();
    let closest = keys
        .iter()
        .map(|k| (edits(found, k), k))
        .min()
        .filter(|(d, k)| *d <= 2.max(k.len() / 4));
    match closest {
        Some((_, k)) => format!("not a configuration key; did you mean `{k}`? (keys: README.md)"),
        None => format!(
            "not a configuration key; the keys are {}",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What is allowed at `key`, given what serde expected there.
fn allowed(key: &str, expected: &str) -> String {
    let table = key.split('.').next().unwrap_or_default();
    let nested = key.contains('.');
    match (table, expected) {
        ("kafka" | "kafka_consumer" | "kafka_producer", "a string") if nested => {
            format!(
                "a string, e.g. `\"all\"` or `\"6000\"` (librdkafka property values are strings; \
                 a property name with dots must be quoted in the file, `\"security.protocol\" = \
                 \"SSL\"`, and is spelt with `__` for each dot in a variable, \
                 `ENGAGED_{}__SECURITY__PROTOCOL=SSL`)",
                table.to_ascii_uppercase()
            )
        }
        ("kafka" | "kafka_consumer" | "kafka_producer", _) => format!(
            "a table of librdkafka properties, e.g. `[{table}]` then `\"security.protocol\" = \
             \"SSL\"` (expected {expected})"
        ),
        ("schema_ids" | "topic_schemas", "a string") if nested => {
            "the path of an .avsc file, as a string".into()
        }
        ("schema_ids", _) => {
            "a table of schema id → .avsc path, e.g. `[schema_ids]` then `1 = \"/x.avsc\"`".into()
        }
        ("topic_schemas", _) => {
            "a table of topic → .avsc path, e.g. `[topic_schemas]` then `pageviews = \"/x.avsc\"`"
                .into()
        }
        ("schema_registry", _) if !nested => {
            "a table of Schema Registry settings, e.g. `[schema_registry]` then \
             `url = \"http://schema-registry:8081\"` (keys: README.md)"
                .into()
        }
        (_, "f64") => "a number (expected f64)".into(),
        (_, "usize") => "a whole number, 0 or more (expected usize)".into(),
        (_, e) if e.contains("untagged enum OneOrMany") => {
            "a list of strings, e.g. `[\"a\", \"b\"]`, or one comma-separated string `\"a,b\"`"
                .into()
        }
        (_, e) => format!("expected {e}"),
    }
}

/// A TOML syntax error in one line: position, offending line, and what was expected.
fn toml_syntax(msg: &str) -> String {
    let mut head = String::new();
    let mut line = None;
    let mut rest = Vec::new();
    for l in msg.lines() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('|') {
            continue;
        }
        if head.is_empty() {
            head = t.to_string();
        } else if let Some((n, text)) = t.split_once(" | ")
            && n.trim().bytes().all(|b| b.is_ascii_digit())
        {
            // The offending line may set a secret (`"sasl.password" = "unterminated`).
            let text = text.trim();
            line = Some(if is_secret(text) {
                match text.split_once('=') {
                    Some((k, _)) => format!("{} = (hidden)", k.trim()),
                    None => "(hidden: it may hold a secret)".to_string(),
                }
            } else {
                text.to_string()
            });
        } else {
            rest.push(t.to_string());
        }
    }
    match line {
        Some(l) => format!("{head} (`{l}`): {}", rest.join(", ")),
        None if rest.is_empty() => head,
        None => format!("{head}: {}", rest.join(", ")),
    }
}

/// Replaces the values of secret-looking keys inside a table (`kafka.sasl` set by
/// `ENGAGED_KAFKA.sasl.password`) by `(hidden)`.
fn hide_secrets(key: &str, v: &mut figment::value::Value) {
    if let figment::value::Value::Dict(_, dict) = v {
        for (k, inner) in dict.iter_mut() {
            let path = format!("{key}.{k}");
            if is_secret(&path) {
                *inner = figment::value::Value::from("(hidden)");
            } else {
                hide_secrets(&path, inner);
            }
        }
    }
}

/// A figment error as one line naming the key, where it was set, the value and what is
/// allowed.
pub(super) fn load_error(fig: &Figment, e: figment::Error) -> ConfigError {
    let more = e.count().saturating_sub(1);
    let Some(e) = e.into_iter().next() else {
        return ConfigError::Load("unreadable configuration".into());
    };
    let key = e.path.join(".");
    let from = origin(&e).map(|o| format!(" ({o})")).unwrap_or_default();
    let value = || {
        shown(&key, || {
            fig.find_value(&key)
                .ok()
                .map(|mut v| {
                    hide_secrets(&key, &mut v);
                    v
                })
                .and_then(|v| serde_json::to_string(&v).ok())
                .unwrap_or_else(|| "(none)".into())
        })
    };
    let mut msg = match &e.kind {
        Kind::UnknownField(found, expected) if key.contains('.') => {
            let table = key.rsplit_once('.').map_or("", |(t, _)| t);
            let keys: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown key `{key}`{from}: not a key of `[{table}]`; its keys are {}",
                keys.join(", ")
            )
        }
        Kind::UnknownField(found, _) => {
            format!("unknown key `{key}`{from}: {}", unknown_key_allowed(found))
        }
        _ if key.is_empty() => {
            let text = match &e.kind {
                Kind::Message(m) if m.starts_with("TOML parse error") => toml_syntax(m),
                k => k
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            match origin(&e) {
                Some(o) => format!("{o}: {text}"),
                None => text,
            }
        }
        Kind::InvalidType(a, exp) | Kind::InvalidValue(a, exp) => format!(
            "`{key}` = {}{from}: {}",
            shown(&key, || actual(a)),
            allowed(&key, exp)
        ),
        Kind::Message(m) => format!("`{key}` = {}{from}: {}", value(), allowed(&key, m)),
        k => format!("`{key}` = {}{from}: {k}", value()),
    };
    if more > 0 {
        msg.push_str(&format!(" (and {more} more)"));
    }
    ConfigError::Load(msg.lines().collect::<Vec<_>>().join(" "))
}
