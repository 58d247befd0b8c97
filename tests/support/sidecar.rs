//! The sidecar in-process: a [`Running`] guard stops it gracefully even when an
//! assertion fails, and `/metrics` is scraped from the test's runtime.
//!
//! `RUST_LOG=engaged=debug cargo test --test NAME -- --nocapture` shows its logs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engaged::app::{AppError, Sidecar};
use engaged::config::RawConfig;
use engaged::decode::DecoderConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::process::http_get;

/// Overall limit for [`settle`].
const PATIENCE: Duration = Duration::from_secs(60);

/// Logs of the sidecar as `RUST_LOG` says (none by default), through the test writer.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A running sidecar. Dropping it (e.g. when an assertion panics) still stops it
/// gracefully while the mock cluster is alive.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
}

impl Running {
    pub async fn start(raw: RawConfig, decoder: &DecoderConfig) -> Running {
        let config = raw.validate().expect("valid test configuration");
        let sidecar = Sidecar::start(config, decoder)
            .await
            .expect("sidecar start");
        let addr = sidecar.http.addr;
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Sends the shutdown signal and returns what `Sidecar::run` returned.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("sidecar stops within 30 s")
            .expect("sidecar task did not panic")
    }

    /// What `Sidecar::run` returned on its own (without a shutdown signal).
    pub async fn join(mut self, limit: Duration) -> Result<(), AppError> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(limit, task)
            .await
            .expect("sidecar returned in time")
            .expect("sidecar task did not panic")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::task::block_in_place(|| {
                let _ = tokio::runtime::Handle::current()
                    .block_on(tokio::time::timeout(Duration::from_secs(15), task));
            });
        }
    }
}

/// [`http_get`] off the runtime's worker threads.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(addr, &path))
        .await
        .map_err(|e| e.to_string())?
}

/// `GET /metrics` of `addr` (off the runtime's worker threads), parsed; fails the test
/// unless it answers 200 with a valid page.
pub async fn scrape(addr: SocketAddr) -> Metrics {
    tokio::task::spawn_blocking(move || Metrics::scrape(addr))
        .await
        .expect("scrape thread")
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
}

/// Scrapes until `ready` holds (failing after [`PATIENCE`]), then once more after
/// two snapshot rounds, so that the returned scrape shows a complete round.
pub async fn settle(addr: SocketAddr, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    settle_within(addr, what, PATIENCE, ready).await
}

/// [`settle`], failing after `patience` instead (a liveness bound: how long the test
/// waits at most, never a measure of speed).
pub async fn settle_within(
    addr: SocketAddr,
    what: &str,
    patience: Duration,
    ready: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + patience;
    loop {
        let m = scrape(addr).await;
        if ready(&m) {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let m = scrape(addr).await;
            assert!(ready(&m), "{what}: condition flapped:\n{}", m.text);
            return m;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last /metrics:\n{}", m.text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
