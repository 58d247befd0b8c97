//! librdkafka client settings shared by the consumer and the producers: ours, then the operator's.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

use super::Config;

/// The settings every client starts from: the brokers.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    c
}

/// The operator's librdkafka settings win over ours: common ones, then the role's own.
pub fn apply_user_settings(
    c: &mut ClientConfig,
    common: &BTreeMap<String, String>,
    role: &BTreeMap<String, String>,
) {
    for (k, v) in common.iter().chain(role) {
        c.set(k, v);
    }
}
