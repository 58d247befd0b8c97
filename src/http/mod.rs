//! HTTP edge: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (ready to serve
//! numbers) and `/`, the live page ([`live`]).
//!
//! Served by axum. The handlers only read: telemetry renders the latest
//! published snapshots (and the live page their bounded history), and readiness is
//! a flag the source loop maintains.

pub mod live;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
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

/// The live page: rendered from the latest round and the history, never from state.
async fn live_page(
    State(s): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let (seq, latest) = s.telemetry.latest_round();
    let history = s.telemetry.history();
    let html = live::render(&live::View {
        seq,
        latest: &latest,
        history: &history,
        now_ms: chrono::Utc::now().timestamp_millis(),
        chart_window: query.get("window").map(String::as_str),
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                live::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
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
        .route("/", get(live_page))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::WindowSnapshot;
    use crate::telemetry::Published;

    /// `GET path` over HTTP/1.0 (a blocking socket on the blocking pool: tokio's
    /// io-util is not enabled).
    async fn get(addr: SocketAddr, path: &str) -> String {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    }

    fn value_of(metrics: &str, name: &str) -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
    }

    #[tokio::test]
    async fn the_live_page_and_metrics_show_the_same_round() {
        let telemetry = Arc::new(Telemetry::new());
        let server = HttpServer::start(
            "127.0.0.1:0".parse().unwrap(),
            telemetry.clone(),
            Arc::new(Health::new()),
        )
        .await
        .unwrap();
        let page = get(server.addr, "/").await;
        assert!(page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"));
        assert!(page.contains("text/html") && page.contains("No snapshot published yet"));
        let csp = page
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-security-policy:")
            })
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert_eq!(
            value_of(
                &get(server.addr, "/metrics").await,
                "engaged_snapshot_sequence"
            ),
            Some(0.0)
        );
        for views in [10, 20, 30] {
            telemetry.publish(Published {
                snapshots: vec![WindowSnapshot {
                    window: "5m".into(),
                    dimension: "all".into(),
                    page_views: views,
                    ..WindowSnapshot::default()
                }],
                ..Published::default()
            });
        }
        let metrics = get(server.addr, "/metrics").await;
        assert_eq!(value_of(&metrics, "engaged_snapshot_sequence"), Some(3.0));
        let page = get(server.addr, "/?window=5m").await;
        assert!(page.contains("data-seq=\"3\""));
        assert!(page.contains(
            "data-metric=\"engaged_web_page_views\" data-window=\"5m\" data-value=\"30\">30<"
        ));
        // Three rounds within one 10 s step of the history (two, should they straddle
        // a step boundary): the last round is the newest point.
        let history = telemetry.history();
        assert!((1..=2).contains(&history.len()), "{}", history.len());
        assert_eq!(history.last().unwrap().seq, 3);
        assert!(page.contains(&format!("data-points=\"{}\"", history.len())));
        server.stop().await;
    }
}
