//! Every invalid configuration value stops start-up with one line naming the key, the
//! value and what is allowed (issue 12, item 7): one row per case.

use std::collections::BTreeMap;

use super::{EnvVars, RawConfig};

struct Case {
    what: &'static str,
    /// The configuration file.
    toml: &'static str,
    /// `ENGAGED_*` variables on top of it.
    env: &'static [(&'static str, &'static str)],
    /// Fragments the one-line message must contain: the key, the value, what is allowed.
    key: &'static str,
    value: &'static str,
    allowed: &'static str,
}

const fn file(
    what: &'static str,
    toml: &'static str,
    key: &'static str,
    value: &'static str,
    allowed: &'static str,
) -> Case {
    Case {
        what,
        toml,
        env: &[],
        key,
        value,
        allowed,
    }
}

/// A bad duration for each duration key (checked against the keys below).
const BAD_DURATION: &str = "a duration such as `500ms`";

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Unknown keys, at the top and inside tables.
    file("unknown key", "port = 9898\n",
         "unknown key `port`", "port", "not a configuration key; the keys are `allowed_lateness`"),
    file("misspelt key", "bootstrap_server = \"kafka:9092\"\n",
         "unknown key `bootstrap_server`", "bootstrap_server", "did you mean `bootstrap_servers`?"),
    file("unknown librdkafka property (its value may be a secret: not shown)",
         "[kafka]\n\"sasl.pasword\" = \"hunter2\"\n",
         "unknown key `kafka.sasl.pasword`", "sasl.pasword", "not a librdkafka property"),
    file("librdkafka property with dots, unquoted", "[kafka]\nsecurity.protocol = \"SSL\"\n",
         "`kafka.security`", "a table", "must be quoted in the file"),
    file("librdkafka value librdkafka refuses", "[kafka_producer]\n\"compression.type\" = \"zip\"\n",
         "`kafka_producer.compression.type`", "\"zip\"", "a value librdkafka accepts"),
    file("librdkafka value that is not a string", "[kafka]\nacks = 1\n",
         "`kafka.acks`", "= 1", "a string"),
    file("secret of the wrong type is not shown", "[kafka]\n\"sasl.password\" = 12345\n",
         "`kafka.sasl.password`", "(hidden)", "a string"),
    file("table that is not a table", "schema_ids = \"1\"\n",
         "`schema_ids`", "\"1\"", "a table of schema id"),
    file("not TOML", "group_id = \n",
         "TOML parse error at line 1, column 12", "`group_id =`", "invalid string"),
    file("wrong type", "risk_threshold = \"high\"\n",
         "`risk_threshold`", "\"high\"", "a number"),
    file("negative count", "max_dimension_values = -1\n",
         "`max_dimension_values`", "-1", "a whole number"),
    // Durations: every duration key (the test checks none is missing).
    file("bad duration", "allowed_lateness = \"soon\"\n", "`allowed_lateness`", "\"soon\"", BAD_DURATION),
    file("bad duration", "idle_timeout = \"soon\"\n", "`idle_timeout`", "\"soon\"", BAD_DURATION),
    file("bad duration", "max_clock_skew = \"1 hour ago\"\n", "`max_clock_skew`", "\"1 hour ago\"", BAD_DURATION),
    file("bad duration", "dedup_window = \"10\"\n", "`dedup_window`", "\"10\"", BAD_DURATION),
    file("bad duration", "session_timeout = \"30 minutes later\"\n", "`session_timeout`", "\"30 minutes later\"", BAD_DURATION),
    file("bad duration", "snapshot_interval = \"-5s\"\n", "`snapshot_interval`", "\"-5s\"", BAD_DURATION),
    file("bad duration", "shutdown_timeout = \"30S\"\n", "`shutdown_timeout`", "\"30S\"", BAD_DURATION),
    file("bad duration", "statistics_interval = \"5.5.5s\"\n", "`statistics_interval`", "\"5.5.5s\"", BAD_DURATION),
    file("bad duration", "checkpoint_interval = \"\"\n", "`checkpoint_interval`", "\"\"", BAD_DURATION),
    file("bad duration", "restore_timeout = \"2min30\"\n", "`restore_timeout`", "\"2min30\"", BAD_DURATION),
    file("bad duration", "email_dedup_ttl = \"a month\"\n", "`email_dedup_ttl`", "\"a month\"", BAD_DURATION),
    file("bad duration", "attribution_window = \"7days!\"\n", "`attribution_window`", "\"7days!\"", BAD_DURATION),
    file("bad duration", "churn_horizon = \"P90D\"\n", "`churn_horizon`", "\"P90D\"", BAD_DURATION),
    file("bad duration", "model_refit_interval = \"often\"\n", "`model_refit_interval`", "\"often\"", BAD_DURATION),
    file("bad duration", "state_ttl = \"forever\"\n", "`state_ttl`", "\"forever\"", BAD_DURATION),
    file("zero where a period is needed", "session_timeout = \"0s\"\n",
         "`session_timeout`", "\"0s\"", "greater than zero"),
    file("state_ttl shorter than what needs the state", "state_ttl = \"30d\"\n",
         "`state_ttl`", "\"30d\"", "`off` or at least"),
    // Windows.
    file("no window", "windows = []\n", "`windows`", "\"\"", "at least one window"),
    file("window duplicated", "windows = [\"5m\", \"1h\", \"5m\"]\n",
         "`windows`", "\"5m,1h,5m\"", "distinct windows (`5m` is listed twice)"),
    file("window duplicated under another name", "windows = [\"1h\", \"60m\"]\n",
         "`windows`", "\"1h,60m\"", "`1h` and `60m` have the same length"),
    file("window duplicated with another bucket", "windows = \"1h,1h/30s\"\n",
         "`windows`", "\"1h,1h/30s\"", "`1h` and `1h/30s` have the same length"),
    file("bucket not dividing its window", "windows = [\"1h/7m\"]\n",
         "`windows`", "\"1h/7m\"", "the bucket must divide the window"),
    file("bucket longer than its window", "windows = [\"1h/2h\"]\n",
         "`windows`", "\"1h/2h\"", "the bucket must divide the window"),
    file("empty bucket", "windows = [\"1h/0s\"]\n",
         "`windows`", "\"1h/0s\"", "the bucket must divide the window"),
    file("default bucket (window / 60) not whole milliseconds", "windows = [\"1s\"]\n",
         "`windows`", "\"1s\"", "an explicit bucket that divides it, e.g. `1s/100ms`"),
    file("window not a duration", "windows = [\"5x\"]\n",
         "`windows`", "\"5x\"", "windows like `5m`"),
    file("window too short", "windows = [\"500ms\"]\n",
         "`windows`", "\"500ms\"", "at least 1s"),
    file("window list of the wrong type", "windows = 5\n",
         "`windows`", "= 5", "a list of strings"),
    file("lateness longer than the smallest window", "allowed_lateness = \"6m\"\n",
         "`allowed_lateness`", "\"6m\"", "no longer than the shortest of `windows`, `5m`"),
    file("lateness longer than the smallest window, whatever the order",
         "windows = [\"1h\", \"10m\", \"24h\"]\nallowed_lateness = \"15m\"\n",
         "`allowed_lateness`", "\"15m\"", "the shortest of `windows`, `10m`"),
    Case {
        what: "lateness longer than the smallest window, from the environment",
        toml: "",
        env: &[("ENGAGED_WINDOWS", "1m,1h"), ("ENGAGED_ALLOWED_LATENESS", "2m")],
        key: "`allowed_lateness`",
        value: "\"2m\"",
        allowed: "the shortest of `windows`, `1m`",
    },
    Case {
        what: "window duplicated, from the environment",
        toml: "",
        env: &[("ENGAGED_WINDOWS", "1h,3600s")],
        key: "`windows`",
        value: "\"1h,3600s\"",
        allowed: "`1h` and `3600s` have the same length",
    },
    // Topics.
    file("empty topic list", "input_topics = []\n", "`input_topics`", "\"\"", "at least one topic"),
    file("empty topic list, as a string", "input_topics = \" , \"\n",
         "`input_topics`", "\"\"", "at least one topic"),
    file("empty topic name", "input_topics = [\"pageviews\", \"\"]\n",
         "`input_topics`", "\"\"", "a Kafka topic name"),
    file("illegal topic name", "input_topics = [\"page views\"]\n",
         "`input_topics`", "\"page views\"", "a Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`"),
    file("topic listed twice", "input_topics = [\"emails\", \"purchases\", \"emails\"]\n",
         "`input_topics`", "\"emails,purchases,emails\"", "`emails` is listed twice"),
    file("two outputs in one topic", "checkpoint_topic = \"engagement.snapshots\"\n",
         "`checkpoint_topic`", "engagement.snapshots", "`snapshot_topic` is the same topic"),
    file("empty output topic", "snapshot_topic = \"\"\n", "`snapshot_topic`", "\"\"", "a Kafka topic name"),
    file("illegal output topic", "dead_letter_topic = \"dlq/engaged\"\n",
         "`dead_letter_topic`", "\"dlq/engaged\"", "a Kafka topic name"),
    file("output topic that is an input", "checkpoint_topic = \"pageviews\"\n",
         "`checkpoint_topic`", "\"pageviews\"", "not also an input topic"),
    file("plain-datum schema for a topic not read", "[topic_schemas]\nclicks = \"/x.avsc\"\n",
         "`topic_schemas.clicks`", "\"clicks\"", "one of the input_topics"),
    file("schema id that is not a number", "[schema_ids]\nabc = \"/x.avsc\"\n",
         "`schema_ids.abc`", "\"abc\"", "a schema id"),
    // Other values.
    file("no brokers", "bootstrap_servers = \" \"\n", "`bootstrap_servers`", "\" \"", "`host:port"),
    file("no group", "group_id = \"\"\n", "`group_id`", "\"\"", "a non-empty consumer group id"),
    file("address without port", "listen = \"localhost\"\n",
         "`listen`", "\"localhost\"", "an address like `127.0.0.1:9898`"),
    file("currency", "currency = \"euro\"\n", "`currency`", "\"euro\"", "an ISO 4217 code"),
    file("model", "model = \"pareto\"\n", "`model`", "\"pareto\"", "`mbg_nbd` (default) or `bg_nbd`"),
    file("probability", "risk_threshold = 1.5\n", "`risk_threshold`", "\"1.5\"", "a probability"),
    file("no breakdown values", "max_dimension_values = 0\n", "`max_dimension_values`", "\"0\"", "at least 1"),
    file("fewer named than published", "max_label_values = 10\n",
         "`max_label_values`", "\"10\"", "at least max_dimension_values (20)"),
    file("size", "max_memory = \"2 parsecs\"\n", "`max_memory`", "\"2 parsecs\"", "a size such as `512MiB`"),
    // Back-pressure bounds.
    file("no output in flight", "max_output_in_flight = 0\n",
         "`max_output_in_flight`", "\"0\"", "at least 1 (output records produced and not yet acknowledged)"),
    file("output bound not a count", "max_output_in_flight = \"many\"\n",
         "`max_output_in_flight`", "\"many\"", "a whole number"),
    file("output bytes not a size", "max_output_in_flight_bytes = \"lots\"\n",
         "`max_output_in_flight_bytes`", "\"lots\"", "a size such as `512MiB`"),
    file("output bytes below one Kafka record", "max_output_in_flight_bytes = \"64KiB\"\n",
         "`max_output_in_flight_bytes`", "\"64KiB\"", "at least 1MiB, so that the largest Kafka record"),
    // The Schema Registry.
    file("registry URL without a scheme", "[schema_registry]\nurl = \"registry:8081\"\n",
         "`schema_registry.url`", "\"registry:8081\"", "an http:// or https:// URL"),
    file("registry URL of another scheme", "[schema_registry]\nurl = \"ftp://registry\"\n",
         "`schema_registry.url`", "\"ftp://registry\"", "an http:// or https:// URL"),
    file("registry URL without a host", "[schema_registry]\nurl = \"http://\"\n",
         "`schema_registry.url`", "\"http://\"", "an http:// or https:// URL such as `http://schema-registry:8081` (empty host)"),
    file("registry URL that does not parse", "[schema_registry]\nurl = \"http://registry:80a1\"\n",
         "`schema_registry.url`", "\"http://registry:80a1\"", "(invalid port number)"),
    file("registry URL with credentials (not shown)", "[schema_registry]\nurl = \"https://u:hunter2@registry\"\n",
         "`schema_registry.url`", "(hidden", "a URL without credentials: set `schema_registry.username`"),
    file("registry URL with a query", "[schema_registry]\nurl = \"http://registry/?x=1\"\n",
         "`schema_registry.url`", "\"http://registry/?x=1\"", "without a `?query`"),
    file("registry keys without a URL", "[schema_registry]\ntimeout = \"1s\"\n",
         "`schema_registry.url`", "\"\"", "the other `schema_registry` keys are set"),
    file("bad duration", "[schema_registry]\nurl = \"http://r\"\ntimeout = \"soon\"\n",
         "`schema_registry.timeout`", "\"soon\"", BAD_DURATION),
    file("bad duration", "[schema_registry]\nurl = \"http://r\"\nbackoff = \"-1s\"\n",
         "`schema_registry.backoff`", "\"-1s\"", BAD_DURATION),
    file("bad duration", "[schema_registry]\nurl = \"http://r\"\nnegative_cache_ttl = \"a while\"\n",
         "`schema_registry.negative_cache_ttl`", "\"a while\"", BAD_DURATION),
    file("zero registry time-out", "[schema_registry]\nurl = \"http://r\"\ntimeout = \"0s\"\n",
         "`schema_registry.timeout`", "\"0s\"", "greater than zero"),
    file("too many registry retries", "[schema_registry]\nurl = \"http://r\"\nmax_retries = 11\n",
         "`schema_registry.max_retries`", "\"11\"", "0 to 10 retries"),
    file("negative registry retries", "[schema_registry]\nurl = \"http://r\"\nmax_retries = -1\n",
         "`schema_registry.max_retries`", "-1", "a whole number, 0 or more"),
    file("registry lookups that could stall the consumer", "[schema_registry]\nurl = \"http://r\"\ntimeout = \"60s\"\n",
         "`schema_registry.max_retries`", "\"3\"", "could hold the consumer loop 241s"),
    file("registry user without a password (not shown)", "[schema_registry]\nurl = \"http://r\"\nusername = \"hunter2\"\n",
         "`schema_registry.password`", "\"\"", "basic authentication needs both"),
    file("registry password without a user", "[schema_registry]\nurl = \"http://r\"\npassword = \"hunter2\"\n",
         "`schema_registry.username`", "\"\"", "basic authentication needs both"),
    file("registry password twice", "[schema_registry]\nurl = \"http://r\"\nusername = \"u\"\npassword = \"hunter2\"\npassword_file = \"/run/x\"\n",
         "`schema_registry.password_file`", "\"/run/x\"", "not both"),
    file("registry password file missing", "[schema_registry]\nurl = \"http://r\"\nusername = \"u\"\npassword_file = \"/nonexistent/registry-password\"\n",
         "`schema_registry.password_file`", "\"/nonexistent/registry-password\"", "a readable file holding the value of `schema_registry.password`"),
    file("CA file for an http:// registry", "[schema_registry]\nurl = \"http://r\"\nca_file = \"/etc/ca.pem\"\n",
         "`schema_registry.ca_file`", "\"/etc/ca.pem\"", "it is for https://"),
    file("unknown registry key (its value may be a secret: not shown)", "[schema_registry]\nurl = \"http://r\"\npasword = \"hunter2\"\n",
         "unknown key `schema_registry.pasword`", "pasword", "not a key of `[schema_registry]`; its keys are `url`"),
    file("registry table that is not a table", "schema_registry = \"http://r\"\n",
         "`schema_registry`", "\"http://r\"", "a table of Schema Registry settings"),
    Case {
        what: "registry retries from the environment that are not a number",
        toml: "[schema_registry]\nurl = \"http://r\"\n",
        env: &[("ENGAGED_SCHEMA_REGISTRY__MAX_RETRIES", "lots")],
        key: "`schema_registry.max_retries`",
        value: "\"lots\"",
        allowed: "a whole number",
    },
    Case {
        what: "registry URL from the environment",
        toml: "",
        env: &[("ENGAGED_SCHEMA_REGISTRY__URL", "registry.local")],
        key: "`schema_registry.url`",
        value: "\"registry.local\"",
        allowed: "relative URL without a base",
    },
];

/// The error that stops start-up with this file and these variables, if any.
fn error_of(toml: &str, env: &[(&str, &str)]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("engaged.toml");
    std::fs::write(&f, toml).unwrap();
    let env = EnvVars::from_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let no_flags = BTreeMap::<String, String>::new();
    match RawConfig::load_with_env(Some(&f), env, &no_flags) {
        Err(e) => Some(e.to_string()),
        Ok(raw) => raw.validate().err().map(|e| e.to_string()),
    }
}

#[test]
fn every_invalid_value_stops_start_up_with_one_line_naming_key_value_and_what_is_allowed() {
    let mut failures = Vec::new();
    for case in CASES {
        let Some(e) = error_of(case.toml, case.env) else {
            failures.push(format!("{}: accepted\n  {:?}", case.what, case.toml));
            continue;
        };
        let one_line = !e.contains('\n') && e.starts_with("invalid configuration: ");
        if !one_line
            || !e.contains(case.key)
            || !e.contains(case.value)
            || !e.contains(case.allowed)
        {
            failures.push(format!(
                "{}: {e}\n  wanted key {:?}, value {:?}, allowed {:?}",
                case.what, case.key, case.value, case.allowed
            ));
        }
        if e.contains("hunter2") || e.contains("12345") {
            failures.push(format!("{}: shows a secret: {e}", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_table_has_a_bad_duration_for_every_duration_key() {
    let defaults = serde_json::to_value(RawConfig::default()).unwrap();
    let duration_keys: Vec<&String> = defaults
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| {
            // `state_ttl` defaults to `off`, `windows` is a list.
            *k == "state_ttl"
                || v.as_str()
                    .is_some_and(|s| humantime::parse_duration(s).is_ok())
        })
        .map(|(k, _)| k)
        .collect();
    assert_eq!(duration_keys.len(), 15, "{duration_keys:?}");
    for key in duration_keys {
        let tested = CASES
            .iter()
            .any(|c| c.allowed == BAD_DURATION && c.key == format!("`{key}`"));
        assert!(tested, "no bad-duration row for `{key}`");
    }
}

#[test]
fn windows_keep_their_order_and_valid_edges_are_accepted() {
    // Not sorted: the output follows the configured order (README's replay example
    // `--windows 7d,1h`), so an unsorted list is accepted as given.
    let ok = |toml: &str| assert_eq!(error_of(toml, &[]), None, "{toml}");
    ok("windows = [\"7d\", \"1h\"]\n");
    ok("windows = [\"1s/100ms\"]\nallowed_lateness = \"1s\"\n");
    ok("windows = [\"1h/1h\"]\n");
    // Lateness equal to the shortest window, or none at all.
    ok("allowed_lateness = \"5m\"\n");
    ok("allowed_lateness = \"0s\"\n");
    ok("[kafka]\n\"security.protocol\" = \"PLAINTEXT\"\n\"session.timeout.ms\" = \"6000\"\n");
    let raw = RawConfig {
        windows: vec!["7d".into(), "3d/1h".into(), "1h".into(), "10m".into()],
        ..RawConfig::default()
    };
    let names: Vec<String> = raw
        .validate()
        .unwrap()
        .core
        .windows
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["7d", "3d", "1h", "10m"]);
}

#[test]
fn the_registry_password_comes_from_a_file_or_a_variable_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("registry-password");
    std::fs::write(&secret, "hunter2-from-a-file\n").unwrap();
    let f = dir.path().join("engaged.toml");
    let toml = format!(
        "[schema_registry]\nurl = \"https://registry:8081/\"\nusername = \"reader\"\n\
         password_file = \"{}\"\n",
        secret.display()
    );
    std::fs::write(&f, toml).unwrap();
    let no_flags = BTreeMap::<String, String>::new();
    let load = |env: &[(&str, &str)]| {
        let env = EnvVars::from_vars(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        RawConfig::load_with_env(Some(&f), env, &no_flags)
    };
    let raw = load(&[("ENGAGED_SCHEMA_REGISTRY__MAX_RETRIES", "5")]).unwrap();
    let config = raw.validate().unwrap();
    let registry = config.schema_registry.as_ref().expect("a registry");
    assert_eq!(registry.url, "https://registry:8081");
    assert_eq!(registry.max_retries, 5);
    // 6 attempts of 5 s, pauses of 0.2, 0.4, 0.8, 1.6 and 3.2 s.
    assert_eq!(
        registry.worst_case_wait(),
        std::time::Duration::from_millis(36_200)
    );
    let auth = registry.auth.as_ref().expect("basic auth");
    assert_eq!(
        (auth.username.expose(), auth.password.expose()),
        ("reader", "hunter2-from-a-file")
    );
    for shown in [format!("{raw:?}"), format!("{config:?}")] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("reader"),
            "{shown}"
        );
    }
    // A variable sets it too; with the file as well, start-up stops (without showing it).
    let e = load(&[(
        "ENGAGED_SCHEMA_REGISTRY__PASSWORD",
        "hunter2-from-a-variable",
    )])
    .unwrap_err()
    .to_string();
    assert!(e.contains("not both") && !e.contains("hunter2"), "{e}");
    std::fs::write(
        &f,
        "[schema_registry]\nurl = \"http://r\"\nusername = \"reader\"\n",
    )
    .unwrap();
    let raw = load(&[(
        "ENGAGED_SCHEMA_REGISTRY__PASSWORD",
        "hunter2-from-a-variable",
    )])
    .unwrap();
    let config = raw.validate().unwrap();
    let auth = config.schema_registry.unwrap().auth.unwrap();
    assert_eq!(auth.password.expose(), "hunter2-from-a-variable");
}
