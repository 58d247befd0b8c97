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

/// Which client a librdkafka configuration is for: which table overrides `[kafka]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The consumer group member: `[kafka]`, then `[kafka_consumer]`.
    Consumer,
    /// The output producers: `[kafka]`, then `[kafka_producer]`.
    Producer,
    /// The admin client (creates the checkpoint topic): `[kafka]` only.
    Admin,
}

/// The brokers and the operator's librdkafka settings a client of `role` is built
/// with, secrets included (read from `*_file` keys and `ENGAGED_<TABLE>__<PROPERTY>`
/// variables when the configuration was loaded). The clients set their own defaults
/// between [`client_config`] and [`apply_user_settings`]; the operator's win. Its
/// `Debug` (rdkafka's) hides librdkafka's sensitive properties.
pub fn client_config_for(cfg: &Config, role: Role) -> ClientConfig {
    let mut c = client_config(cfg);
    let none = BTreeMap::new();
    let own = match role {
        Role::Consumer => &cfg.kafka_consumer,
        Role::Producer => &cfg.kafka_producer,
        Role::Admin => &none,
    };
    apply_user_settings(&mut c, &cfg.kafka, own);
    c
}
