//! Validation and loading of the configuration: defaults, layering, environment variables, secrets.

use super::*;

fn err(raw: RawConfig) -> String {
    raw.validate().unwrap_err().to_string()
}

#[test]
fn defaults_validate_to_the_spec_defaults() {
    let c = RawConfig::default().validate().unwrap();
    let names: Vec<_> = c.core.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["5m", "1h", "24h", "7d", "30d"]);
    assert_eq!(c.core.windows[1].bucket_ms, 60_000);
    assert_eq!(c.core.allowed_lateness_ms, 300_000);
    assert_eq!(c.core.session_timeout_ms, 1_800_000);
    assert_eq!(c.core.dedup_window_ms, 600_000);
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.max_clock_skew, Some(Duration::from_secs(3600)));
    assert_eq!(c.snapshot_interval, Duration::from_secs(5));
}

#[test]
fn errors_name_key_value_and_what_is_allowed() {
    let e = err(RawConfig {
        session_timeout: "soon".into(),
        ..Default::default()
    });
    assert!(
        e.contains("`session_timeout`") && e.contains("\"soon\"") && e.contains("duration"),
        "{e}"
    );
    let e = err(RawConfig {
        windows: vec!["1h/7m".into()],
        ..Default::default()
    });
    assert!(
        e.contains("`windows`") && e.contains("1h/7m") && e.contains("divide"),
        "{e}"
    );
    let e = err(RawConfig {
        listen: "localhost".into(),
        ..Default::default()
    });
    assert!(e.contains("`listen`"), "{e}");
    let e = err(RawConfig {
        snapshot_topic: "pageviews".into(),
        ..Default::default()
    });
    assert!(
        e.contains("`snapshot_topic`") && e.contains("not also an input"),
        "{e}"
    );
}

#[test]
fn state_ttl_is_off_by_default_and_never_shorter_than_what_needs_the_state() {
    assert_eq!(
        RawConfig::default().validate().unwrap().core.state_ttl_ms,
        None
    );
    let with = |v: &str| {
        RawConfig {
            state_ttl: v.into(),
            ..RawConfig::default()
        }
        .validate()
    };
    assert_eq!(with("off").unwrap().core.state_ttl_ms, None);
    assert_eq!(
        with("365d").unwrap().core.state_ttl_ms,
        Some(365 * 86_400_000)
    );
    // Default churn_horizon 90d (longer than the 30d window) + allowed_lateness 5m.
    let e = with("90d").unwrap_err().to_string();
    assert!(
        e.contains("`state_ttl`")
            && e.contains("90d")
            && e.contains("`churn_horizon`")
            && e.contains("`allowed_lateness`"),
        "{e}"
    );
    // Exactly the least allowed value is accepted.
    assert_eq!(
        with("90d 5m").unwrap().core.state_ttl_ms,
        Some(90 * 86_400_000 + 300_000)
    );
    assert!(
        with("soon")
            .unwrap_err()
            .to_string()
            .contains("`state_ttl`")
    );
}

#[test]
fn a_configuration_that_cannot_fit_in_max_memory_is_refused_by_key() {
    let ok = RawConfig {
        max_memory: "2GiB".into(),
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(ok.max_memory, Some(2 << 30));
    assert_eq!(RawConfig::default().validate().unwrap().max_memory, None);
    // Second buckets over a month need gigabytes per task.
    let e = err(RawConfig {
        max_memory: "2GiB".into(),
        windows: vec!["30d/1s".into()],
        ..Default::default()
    });
    assert!(
        e.contains("`max_memory`")
            && e.contains("2GiB")
            && e.contains("`windows`")
            && e.contains("`churn_horizon`"),
        "{e}"
    );
    // The default windows need a few megabytes per task.
    let e = err(RawConfig {
        max_memory: "1MB".into(),
        ..Default::default()
    });
    assert!(e.contains("at least"), "{e}");
    for bad in ["lots", "2 parsecs", "0", "-1GiB"] {
        let e = err(RawConfig {
            max_memory: bad.into(),
            ..Default::default()
        });
        assert!(
            e.contains("`max_memory`") && e.contains("GiB"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn explicit_bucket_sizes_are_accepted() {
    let c = RawConfig {
        windows: vec!["1h/30s".into(), "10m".into()],
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(c.core.windows[0].bucket_ms, 30_000);
    assert_eq!(c.core.windows[1].bucket_ms, 10_000);
}

#[test]
fn layers_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("engaged.toml");
    std::fs::write(
        &f,
        "group_id = \"from-file\"\nwindows = [\"1h\"]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    #[derive(Serialize)]
    struct Flags {
        listen: &'static str,
    }
    let raw = RawConfig::load(
        Some(&f),
        &Flags {
            listen: "127.0.0.1:2",
        },
    )
    .unwrap();
    assert_eq!(raw.group_id, "from-file");
    assert_eq!(raw.windows, ["1h"]);
    assert_eq!(raw.listen, "127.0.0.1:2");
    std::fs::write(&f, "no_such_key = 1\n").unwrap();
    let no_flags = BTreeMap::<String, String>::new();
    let e = RawConfig::load(Some(&f), &no_flags)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_key"), "{e}");
}

/// What Kubernetes injects into every pod of a namespace with a Service named
/// `engaged` (ports 9898 `http`), as `kubectl exec … env` shows it.
const KUBERNETES_SERVICE_LINKS: [(&str, &str); 8] = [
    ("ENGAGED_SERVICE_HOST", "10.96.14.7"),
    ("ENGAGED_SERVICE_PORT", "9898"),
    ("ENGAGED_SERVICE_PORT_HTTP", "9898"),
    ("ENGAGED_PORT", "tcp://10.96.14.7:9898"),
    ("ENGAGED_PORT_9898_TCP", "tcp://10.96.14.7:9898"),
    ("ENGAGED_PORT_9898_TCP_PROTO", "tcp"),
    ("ENGAGED_PORT_9898_TCP_PORT", "9898"),
    ("ENGAGED_PORT_9898_TCP_ADDR", "10.96.14.7"),
];

fn env(vars: &[(&str, &str)]) -> EnvVars {
    EnvVars::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn kubernetes_service_links_do_not_stop_start_up_and_real_keys_still_apply() {
    let mut vars = KUBERNETES_SERVICE_LINKS.to_vec();
    vars.extend([
        ("ENGAGED_GROUP_ID", "from-env"),
        ("ENGAGED_WINDOWS", "5m,1h"),
        ("ENGAGED_RISK_THRESHOLD", "0.8"),
        ("HOME", "/root"),
        ("ENGAGED_BOOTSTRAP_SERVER", "typo:9092"),
    ]);
    let env = env(&vars);
    let mut expected: Vec<&str> = KUBERNETES_SERVICE_LINKS.iter().map(|(k, _)| *k).collect();
    expected.push("ENGAGED_BOOTSTRAP_SERVER");
    expected.sort();
    assert_eq!(env.ignored, expected);
    for (name, _) in KUBERNETES_SERVICE_LINKS {
        assert!(is_service_link(name), "{name}");
    }
    // A typo is ignored too, but it is not a service link: it is logged as a warning.
    assert!(!is_service_link("ENGAGED_BOOTSTRAP_SERVER"));
    assert!(!is_service_link("ENGAGED_PORT_X_TCP"));
    assert!(!is_service_link("ENGAGED_PORT_9898_HTTP"));

    let no_flags = BTreeMap::<String, String>::new();
    let raw = RawConfig::load_with_env(None, env, &no_flags).unwrap();
    assert_eq!(raw.group_id, "from-env");
    assert_eq!(raw.windows, ["5m", "1h"]);
    assert_eq!(raw.risk_threshold, 0.8);
    assert_eq!(raw.bootstrap_servers, "localhost:9092");
    raw.validate().unwrap();
}

#[test]
fn a_bad_value_of_a_real_key_in_the_environment_still_stops_start_up() {
    let no_flags = BTreeMap::<String, String>::new();
    let load = |vars: &[(&str, &str)]| RawConfig::load_with_env(None, env(vars), &no_flags);
    let e = load(&[("ENGAGED_RISK_THRESHOLD", "high")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("risk_threshold")
            && e.contains("ENGAGED_RISK_THRESHOLD")
            && e.contains("\"high\"")
            && e.contains("f64"),
        "{e}"
    );
    let e = load(&[("ENGAGED_MAX_DIMENSION_VALUES", "-3")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_dimension_values") && e.contains("-3") && e.contains("usize"),
        "{e}"
    );
    // Values that parse but do not validate: the key, the value and what is allowed.
    let raw = load(&[("ENGAGED_WINDOWS", "5x"), ("ENGAGED_PORT", "tcp://x:1")]).unwrap();
    let e = raw.validate().unwrap_err().to_string();
    assert!(
        e.contains("`windows`") && e.contains("5x") && e.contains("windows like"),
        "{e}"
    );
}

#[test]
fn unknown_keys_in_a_file_still_stop_start_up_whatever_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("engaged.toml");
    std::fs::write(&f, "port = 9898\n").unwrap();
    let no_flags = BTreeMap::<String, String>::new();
    let e = RawConfig::load_with_env(Some(&f), env(&KUBERNETES_SERVICE_LINKS), &no_flags)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown key `port`"), "{e}");
}

#[test]
fn environment_keys_nest_with_dots_and_ignore_case_like_figment_env() {
    let no_flags = BTreeMap::<String, String>::new();
    let raw = RawConfig::load_with_env(
        None,
        env(&[("ENGAGED_KAFKA_CONSUMER.fetch.wait.max.ms", "50")]),
        &no_flags,
    );
    // `.` nests, as with figment's `Env`: a librdkafka property with dots is set with
    // `__` instead (`ENGAGED_KAFKA_CONSUMER__FETCH__WAIT__MAX__MS`), and saying so
    // beats silently setting another key.
    let e = raw.unwrap_err().to_string();
    assert!(e.contains("ENGAGED_KAFKA_CONSUMER.FETCH"), "{e}");
    let raw = RawConfig::load_with_env(
        None,
        env(&[("ENGAGED_KAFKA.acks", "all"), ("engaged_group_id", "lower")]),
        &no_flags,
    )
    .unwrap();
    assert_eq!(raw.kafka.get("acks").map(String::as_str), Some("all"));
    assert_eq!(raw.group_id, "lower");
}

/// A file under a temporary directory holding `content`.
fn secret(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<RawConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("engaged.toml");
    std::fs::write(&f, toml).unwrap();
    let no_flags = BTreeMap::<String, String>::new();
    RawConfig::load_with_env(Some(&f), env(vars), &no_flags)
}

#[test]
fn librdkafka_properties_are_set_from_the_environment_with_double_underscores() {
    let raw = load(
        "",
        &[
            // Taken verbatim: not parsed as a list, a number or a bool.
            ("ENGAGED_KAFKA__SASL__PASSWORD", "[p4ss] 123"),
            ("ENGAGED_KAFKA_CONSUMER__SESSION__TIMEOUT__MS", "6000"),
            ("engaged_kafka_producer__enable__idempotence", "true"),
            ("ENGAGED_KAFKA__ACKS", "all"),
            // Not a table of librdkafka properties, or no property: ignored.
            ("ENGAGED_SCHEMA_IDS__7", "/x.avsc"),
            ("ENGAGED_KAFKA__", "x"),
            ("ENGAGED_KAFKA____ACKS", "x"),
        ],
    )
    .unwrap();
    assert_eq!(raw.kafka["sasl.password"], "[p4ss] 123");
    assert_eq!(raw.kafka["acks"], "all");
    assert_eq!(raw.kafka_consumer["session.timeout.ms"], "6000");
    assert_eq!(raw.kafka_producer["enable.idempotence"], "true");
    assert_eq!(raw.kafka.len(), 2, "{raw:?}");
    raw.validate().unwrap();
    let env = env(&[
        ("ENGAGED_SCHEMA_IDS__7", "/x.avsc"),
        ("ENGAGED_KAFKA__", "x"),
        ("ENGAGED_KAFKA__SASL__PASSWORD", "hunter2"),
    ]);
    assert_eq!(env.ignored, ["ENGAGED_KAFKA__", "ENGAGED_SCHEMA_IDS__7"]);
    // Names only.
    let debug = format!("{env:?}");
    assert!(
        debug.contains("ENGAGED_KAFKA__SASL__PASSWORD") && !debug.contains("hunter2"),
        "{debug}"
    );
    // Refused by librdkafka: named by key, the value shown (not a secret).
    let raw = load("", &[("ENGAGED_KAFKA_PRODUCER__COMPRESSION__TYPE", "zip")]).unwrap();
    let e = raw.validate().unwrap_err().to_string();
    assert!(
        e.contains("`kafka_producer.compression.type` = \"zip\""),
        "{e}"
    );
}

#[test]
fn secrets_are_read_from_files_named_by_file_keys_or_variables() {
    let dir = tempfile::tempdir().unwrap();
    let password = secret(&dir, "password", "S3cr3t-from-file\n");
    let producer = secret(&dir, "producer", "pr0ducer secret \r\n");
    let toml = format!("[kafka]\n\"sasl.password_file\" = \"{password}\"\n");
    let raw = load(
        &toml,
        &[
            ("ENGAGED_KAFKA_PRODUCER__SASL__PASSWORD_FILE", &producer),
            ("ENGAGED_KAFKA__SASL__USERNAME", "engaged"),
        ],
    )
    .unwrap();
    assert_eq!(raw.kafka["sasl.password"], "S3cr3t-from-file");
    assert_eq!(raw.kafka["sasl.username"], "engaged");
    // Only the trailing line break goes: spaces are part of a secret.
    assert_eq!(raw.kafka_producer["sasl.password"], "pr0ducer secret ");
    assert!(
        [&raw.kafka, &raw.kafka_producer]
            .iter()
            .all(|t| t.keys().all(|k| !k.ends_with(FILE_SUFFIX))),
        "{raw:?}"
    );
    let cfg = raw.validate().unwrap();
    let consumer = kafka::client_config_for(&cfg, kafka::Role::Consumer);
    assert_eq!(consumer.get("sasl.password"), Some("S3cr3t-from-file"));
    let producer = kafka::client_config_for(&cfg, kafka::Role::Producer);
    assert_eq!(producer.get("sasl.password"), Some("pr0ducer secret "));
    assert_eq!(producer.get("sasl.username"), Some("engaged"));
    // `Debug` of every form of the configuration hides them.
    for debug in [
        format!("{raw:?}"),
        format!("{cfg:?}"),
        format!("{consumer:?}"),
        format!("{producer:?}"),
    ] {
        assert!(
            !debug.contains("S3cr3t") && !debug.contains("pr0ducer"),
            "{debug}"
        );
    }
    assert!(format!("{cfg:?}").contains("\"sasl.password\": (hidden)"));
    assert!(format!("{cfg:?}").contains("group_id: \"engaged\""));
}

#[test]
fn a_secret_file_that_cannot_be_used_stops_start_up_naming_key_and_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "C4nary-in-a-file";
    let with = |table: &str, key: &str, path: &str| {
        let toml = format!("[{table}]\n\"{key}\" = \"{path}\"\n");
        match load(&toml, &[]) {
            Ok(raw) => raw.validate().map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let missing = dir.path().join("nowhere").display().to_string();
    let readable = secret(&dir, "secret", &format!("{canary}\n"));
    let empty = secret(&dir, "empty", "\n");
    let cases = [
        (
            "kafka",
            "sasl.password_file",
            missing.as_str(),
            "a readable file holding the value of `sasl.password` (No such file",
        ),
        (
            "kafka",
            "sasl.password_file",
            empty.as_str(),
            "(it is empty)",
        ),
        (
            "kafka_consumer",
            "sasl.pasword_file",
            readable.as_str(),
            "unknown key `kafka_consumer.sasl.pasword_file`: `sasl.pasword` is not",
        ),
        (
            "kafka",
            "ssl.key.password_file",
            readable.as_str(),
            "not supported in this build: OpenSSL not available",
        ),
        // Refused by librdkafka: its text would quote the value; not shown, even for
        // a property whose name does not look secret.
        (
            "kafka_producer",
            "acks_file",
            readable.as_str(),
            "a file holding a value of `acks` that librdkafka accepts (librdkafka refuses it)",
        ),
        (
            "kafka",
            "_file",
            readable.as_str(),
            "unknown key `kafka._file`",
        ),
    ];
    for (table, key, path, allowed) in cases {
        let e = with(table, key, path).unwrap_err();
        assert!(
            e.starts_with("invalid configuration: ")
                && !e.contains('\n')
                && e.contains(&format!("{table}.{key}"))
                && e.contains(allowed)
                && !e.contains(canary),
            "{table}.{key}: {e}"
        );
        if !allowed.starts_with("unknown key") {
            assert!(e.contains(&format!("{path:?}")), "{e}");
        }
    }
    // Set twice: directly and from a file.
    let toml =
        format!("[kafka]\n\"sasl.password\" = \"x\"\n\"sasl.password_file\" = \"{readable}\"\n");
    let e = load(&toml, &[]).unwrap_err().to_string();
    assert!(
        e.contains("`kafka.sasl.password_file`")
            && e.contains("either `kafka.sasl.password` or `kafka.sasl.password_file`")
            && !e.contains(canary),
        "{e}"
    );
    // Built in code without loading: the file was never read.
    let raw = RawConfig {
        kafka: BTreeMap::from([("sasl.password_file".into(), readable.clone())]),
        ..RawConfig::default()
    };
    let e = raw.clone().validate().unwrap_err().to_string();
    assert!(e.contains("read_secret_files"), "{e}");
    let mut raw = raw;
    raw.read_secret_files().unwrap();
    assert_eq!(raw.validate().unwrap().kafka["sasl.password"], canary);
}

#[test]
fn secrets_are_not_shown_in_any_load_or_validation_error() {
    let canary = "hunter2-canary";
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("engaged.toml");
    let no_flags = BTreeMap::<String, String>::new();
    let error = |toml: &str, vars: &[(&str, &str)]| {
        std::fs::write(&f, toml).unwrap();
        match RawConfig::load_with_env(Some(&f), env(vars), &no_flags) {
            Ok(raw) => raw.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    let cases = [
        // Not TOML, on the line of the secret.
        error(&format!("[kafka]\n\"sasl.password\" = \"{canary}\n"), &[]),
        error(&format!("[kafka]\nsasl.password = {canary}\n"), &[]),
        // Nested by `.` in a variable's name: a table where a string belongs.
        error("", &[("ENGAGED_KAFKA.sasl.password", canary)]),
        // Refused by librdkafka.
        error("", &[("ENGAGED_KAFKA__SSL__KEY__PASSWORD", canary)]),
        error(
            &format!(
                "[kafka_consumer]\n\"sasl.oauthbearer.config\" = \"{canary}\"\n\"sasl.mechanisms\" = 7\n"
            ),
            &[],
        ),
        // Unknown property (a misspelt secret).
        error("", &[("ENGAGED_KAFKA__SASL__PASSWROD", canary)]),
    ];
    for e in cases {
        assert!(!e.contains(canary) && !e.contains('\n'), "{e}");
    }
}

#[test]
fn sasl_mechanisms_this_build_lacks_stop_start_up_by_key() {
    let check = |toml: &str| {
        load(toml, &[])
            .unwrap()
            .validate()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let features = librdkafka_features();
    assert!(features.iter().any(|f| f == "sasl_plain"), "{features:?}");
    // PLAIN is built in; a mechanism set while SASL is off is only a librdkafka warning.
    check("[kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n")
        .unwrap();
    check("[kafka]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n").unwrap();
    if !features.iter().any(|f| f == "sasl_scram") {
        let e = check(
            "[kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = \"PLAIN\"\n\
             [kafka_producer]\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("`kafka_producer.sasl.mechanisms` = \"SCRAM-SHA-512\"")
                && e.contains("a SASL mechanism this build's librdkafka has: PLAIN"),
            "{e}"
        );
    }
    if !features.iter().any(|f| f == "sasl_gssapi") {
        let e =
            check("[kafka_consumer]\n\"security.protocol\" = \"sasl_plaintext\"\n").unwrap_err();
        assert!(
            e.contains("`kafka_consumer.security.protocol` = \"sasl_plaintext\"")
                && e.contains("GSSAPI"),
            "{e}"
        );
    }
    if !features.iter().any(|f| f == "ssl") {
        let e = check("[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n").unwrap_err();
        assert!(e.contains("OpenSSL not available at build time"), "{e}");
    }
}
