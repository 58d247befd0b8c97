//! The sidecar assembled: pipeline + HTTP server + Kafka source, with a graceful stop.
//!
//! `engaged run` and `engaged demo` both go through [`Sidecar`]; only where the
//! Kafka cluster comes from differs.

use std::future::Future;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::decode::{Decoder, DecoderConfig, SchemaError};
use crate::http::{Health, HttpServer};
use crate::pipeline::Pipeline;
use crate::registry::{RegistryError, SchemaRegistry};
use crate::source::kafka::{self, SourceError};
use crate::state::Engine;
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid writer schema in the configuration: {0}")]
    Schema(#[from] SchemaError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A started sidecar: HTTP is up, Kafka not yet joined.
pub struct Sidecar {
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
    pub http: HttpServer,
    /// The Schema Registry client, when `[schema_registry]` has a URL.
    registry: Option<Arc<SchemaRegistry>>,
    config: Config,
}

impl Sidecar {
    /// Builds the pipeline from `config` and binds the HTTP server.
    pub async fn start(config: Config, decoder: &DecoderConfig) -> Result<Sidecar, AppError> {
        let decoder = Decoder::new(decoder)?;
        let telemetry = Arc::new(Telemetry::new());
        let skew = config.max_clock_skew.map(|d| d.as_millis() as i64);
        let pipeline = Arc::new(Pipeline::new(
            decoder,
            Engine::new(config.core.clone()),
            telemetry.clone(),
            skew,
            config.idle_timeout.as_millis() as i64,
        ));
        let registry = match &config.schema_registry {
            Some(r) => Some(Arc::new(SchemaRegistry::new(r, &telemetry)?)),
            None => None,
        };
        let health = Arc::new(Health::new());
        let http = HttpServer::start(config.listen, telemetry, health.clone())
            .await
            .map_err(|source| AppError::Listen {
                addr: config.listen,
                source,
            })?;
        tracing::info!(addr = %http.addr, "serving /metrics, /healthz, /readyz");
        Ok(Sidecar {
            pipeline,
            health,
            http,
            registry,
            config,
        })
    }

    /// Consumes until `shutdown`, then stops gracefully (SPEC §5) and stops HTTP.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let result = kafka::run(
            &self.config,
            self.pipeline.clone(),
            self.health.clone(),
            self.registry.clone(),
            shutdown,
        )
        .await;
        self.http.stop().await;
        Ok(result?)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
