//! HTTP edge: `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (ready to serve numbers).
//!
//! Served by axum. The handlers only read: telemetry renders the latest
//! published snapshots, and readiness is a flag the source loop maintains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::telemetry::Telemetry;

/// Readiness as the source loop sees it: `None` when ready, else why not.
#[derive(Debug)]
pub struct Health {
    not_ready: Mutex<Option<String>>,
    /// Set from librdkafka's statistics and error callbacks: at least one broker is up.
    brokers_up: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn new() -> Health {
        Health {
            not_ready: Mutex::new(Some("starting".into())),
            brokers_up: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub fn set_ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn set_not_ready(&self, why: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    /// Whether any broker connection is up (from the Kafka client's callbacks).
    pub fn set_brokers_up(&self, up: bool) {
        self.brokers_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// `None` when ready.
    pub fn not_ready(&self) -> Option<String> {
        if !self.brokers_up.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("no connection to any Kafka broker".into());
        }
        self.not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.telemetry.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The router, for tests that drive it without a socket.
pub fn router(telemetry: Arc<Telemetry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { telemetry, health })
}

/// A running HTTP server; dropping it stops it.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped or stopped.
    pub async fn start(
        addr: SocketAddr,
        telemetry: Arc<Telemetry>,
        health: Arc<Health>,
    ) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(telemetry, health);
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(HttpServer {
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Stops accepting and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
