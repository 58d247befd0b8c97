//! The `kafka*` tables against librdkafka itself: secret files, each property checked by its parser, SASL mechanisms this build has.

use super::*;

/// Reads the secret file `path` of `key` (`kafka.sasl.password_file`), for `property`.
/// Errors name the key and the path, never the content.
pub(super) fn secret_file(key: &str, property: &str, path: &str) -> Result<String, ConfigError> {
    let allowed = |why: String| {
        invalid(
            key,
            path,
            format!("a readable file holding the value of `{property}` ({why})"),
        )
    };
    if property.is_empty() {
        return Err(ConfigError::Load(format!(
            "unknown key `{key}`: `<librdkafka property>{FILE_SUFFIX}` names a file holding \
             the value of the property, e.g. `\"sasl.password{FILE_SUFFIX}\"`"
        )));
    }
    if path.trim().is_empty() {
        return Err(allowed("no path given".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| allowed(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| allowed("it is not UTF-8 text".into()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(allowed("it is empty".into()));
    }
    Ok(value.to_string())
}

/// librdkafka's own check of one property (no client is created, nothing is
/// connected): `Err` with librdkafka's description of what is wrong.
pub(super) fn librdkafka_value(name: &str, value: &str) -> Result<(), String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(name, value);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, ..)) => Err(desc),
        Err(other) => Err(other.to_string()),
    }
}

/// Whether librdkafka's description of a refused setting is one that never quotes the
/// value: a property this build does not support (`Configuration property
/// "ssl.key.password" not supported in this build: OpenSSL not available at build time`).
pub(super) fn is_value_free(desc: &str) -> bool {
    desc.starts_with("Configuration property \"")
        && desc.contains("\" not supported in this build: ")
}

/// Checks one `kafka*` table with librdkafka itself, property by property (no client
/// is created, nothing is connected). The value of an unknown property is not shown:
/// it may be a secret under a misspelt name.
pub(super) fn librdkafka_properties(
    table: &str,
    props: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in props {
        // Setting it loads the plugins: that is I/O, left to the clients.
        if name == "plugin.library.paths" {
            continue;
        }
        let key = format!("{table}.{name}");
        if name.ends_with(FILE_SUFFIX) {
            // Only a configuration built in code gets here: loading reads the files.
            return Err(ConfigError::Load(format!(
                "`{key}`: a secret file is read when the configuration is loaded \
                 (`RawConfig::load`, or `RawConfig::read_secret_files` before `validate`)"
            )));
        }
        let Err(desc) = librdkafka_value(name, value) else {
            continue;
        };
        if desc.starts_with("No such configuration property") {
            return Err(ConfigError::Load(format!(
                "unknown key `{key}`: not a librdkafka property (librdkafka's \
                 CONFIGURATION.md lists them; quote a dotted name in the file, \
                 `\"security.protocol\" = \"SSL\"`)"
            )));
        }
        let shown = load_error::shown(&key, || format!("{value:?}"));
        // librdkafka's text quotes the value: never show it for a secret, unless it is
        // one that never does (a property this build does not support).
        let desc = if load_error::is_secret(&key) && !is_value_free(&desc) {
            "librdkafka refuses this value".to_string()
        } else {
            desc
        };
        return Err(ConfigError::Load(format!(
            "`{key}` = {shown}: a value librdkafka accepts ({desc})"
        )));
    }
    Ok(())
}

/// librdkafka's `builtin.features` in this build (`sasl_plain`, `ssl`, `sasl_scram`…);
/// empty if they cannot be read.
pub(super) fn librdkafka_features() -> Vec<String> {
    rdkafka::ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The SASL mechanisms this build's librdkafka can authenticate with.
pub(super) fn sasl_mechanisms_built(features: &[String]) -> Vec<&'static str> {
    [
        ("sasl_plain", "PLAIN"),
        ("sasl_scram", "SCRAM-SHA-256, SCRAM-SHA-512"),
        ("sasl_gssapi", "GSSAPI"),
        ("sasl_oauthbearer", "OAUTHBEARER"),
    ]
    .into_iter()
    .filter(|(f, _)| features.iter().any(|x| x == f))
    .map(|(_, m)| m)
    .collect()
}

/// With `security.protocol` `SASL_*`, librdkafka refuses to create a client whose SASL
/// mechanism was not built in (here SCRAM, GSSAPI — its default — and OAUTHBEARER need
/// OpenSSL, libsasl2 or libcurl): say so at start-up, by key, rather than when the
/// first client is created. Checked per client role, as the clients merge the tables.
pub(super) fn sasl_mechanism_built(
    common: &BTreeMap<String, String>,
    roles: [(&str, &BTreeMap<String, String>); 2],
) -> Result<(), ConfigError> {
    let find = |table: &str, props: &BTreeMap<String, String>, names: &[&str]| {
        [(table, props), ("kafka", common)]
            .into_iter()
            .find_map(|(t, p)| {
                names
                    .iter()
                    .find_map(|n| p.get(*n).map(|v| (format!("{t}.{n}"), v.clone())))
            })
    };
    let mut features = None;
    for (table, props) in roles {
        let Some((protocol_key, protocol)) = find(table, props, &["security.protocol"]) else {
            continue;
        };
        if !protocol.trim().to_ascii_lowercase().starts_with("sasl_") {
            continue;
        }
        let features = features.get_or_insert_with(librdkafka_features);
        if features.is_empty() {
            return Ok(());
        }
        let built = sasl_mechanisms_built(features);
        let required = |mechanism: &str| {
            let m = mechanism.trim().to_ascii_uppercase();
            match m.as_str() {
                "PLAIN" => "sasl_plain",
                "GSSAPI" => "sasl_gssapi",
                "OAUTHBEARER" => "sasl_oauthbearer",
                _ if m.starts_with("SCRAM-SHA-") => "sasl_scram",
                _ => "",
            }
        };
        let supported = |m: &str| {
            let f = required(m);
            f.is_empty() || features.iter().any(|x| x == f)
        };
        let list = if built.is_empty() {
            "none".to_string()
        } else {
            built.join(", ")
        };
        match find(table, props, &["sasl.mechanisms", "sasl.mechanism"]) {
            Some((key, mechanism)) if !supported(&mechanism) => {
                return Err(invalid(
                    &key,
                    &mechanism,
                    format!(
                        "a SASL mechanism this build's librdkafka has: {list} (`{}` needs a \
                         librdkafka built with OpenSSL, libsasl2 or libcurl; \
                         docs/operations.md \"Security\")",
                        mechanism.trim()
                    ),
                ));
            }
            None if !supported("GSSAPI") => {
                return Err(invalid(
                    &protocol_key,
                    protocol,
                    format!(
                        "with `sasl.mechanism` set as well: librdkafka's default, GSSAPI, is \
                         not in this build, which has {list} (docs/operations.md \"Security\")"
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
