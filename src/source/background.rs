//! Background work beside the consumer loop: churn-model refits and rescoring sweeps, each owned by a drop guard.
//!
//! Both are CPU-bound and run on tokio's blocking pool, so neither the consumer
//! loop nor a snapshot ever waits for them. Dropping the [`Background`] guard
//! (shutdown, or an error that ends `run`) stops both loops; a fit or sweep
//! already running on the blocking pool finishes on its own and is discarded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::pipeline::Pipeline;

/// The refit and sweep loops of one `run`; dropping it stops them.
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts refitting the churn model every `refit_interval` (the first soon
    /// after start, once there are customers) and rescoring every customer
    /// every `sweep_interval` with the latest model.
    pub fn start(
        pipeline: &Arc<Pipeline>,
        refit_interval: Duration,
        sweep_interval: Duration,
    ) -> Background {
        Background {
            tasks: vec![
                spawn_refits(pipeline.clone(), refit_interval),
                spawn_sweeps(pipeline.clone(), sweep_interval),
            ],
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Refits the churn model: soon after start (once there are customers), then every `interval`.
fn spawn_refits(pipeline: Arc<Pipeline>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let first = interval.min(Duration::from_secs(30));
        let mut wait = first;
        loop {
            tokio::time::sleep(wait).await;
            let p = pipeline.clone();
            let started = Instant::now();
            let fitted = tokio::task::spawn_blocking(move || p.fit_risk_model()).await;
            match fitted {
                Ok(Some(Ok(m))) => {
                    tracing::info!(model = m.model.name(), customers = m.customers, converged = m.converged,
                        r = m.params.r, alpha = m.params.alpha, a = m.params.a, b = m.params.b,
                        elapsed = ?started.elapsed(), "churn model fitted");
                    pipeline
                        .telemetry()
                        .model_fit_duration
                        .set(started.elapsed().as_secs_f64());
                    pipeline.install_risk_model(m);
                    wait = interval;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "churn model fit failed; keeping the previous model");
                    wait = interval;
                }
                // No customers yet: try again soon.
                Ok(None) => wait = first,
                Err(e) => {
                    tracing::error!(error = %e, "churn model fit panicked");
                    wait = interval;
                }
            }
        }
    })
}

/// Rescores every customer at the published watermark every `interval`, once a
/// model is fitted: snapshots publish the last finished sweep's totals, and the
/// next snapshot round its customer-risk records. A sweep takes about 1 µs per
/// customer with an ORDER; one that takes longer than `interval` delays the next.
fn spawn_sweeps(pipeline: Arc<Pipeline>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let p = pipeline.clone();
            let started = Instant::now();
            match tokio::task::spawn_blocking(move || p.rescore_published()).await {
                Ok(true) => tracing::debug!(elapsed = ?started.elapsed(), "churn risk rescored"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "churn risk sweep panicked"),
            }
        }
    })
}
