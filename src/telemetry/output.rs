//! The families of back-pressure on output: records in flight against their bounds, skipped snapshot rounds, paused consumption.
//!
//! Registered by [`super::Telemetry::new`] with the others; kept apart so that the
//! output edge (`sink::output`, `source::throttle`) can hold a clone of just these.

use prometheus::{Counter, IntCounter, IntGauge, Registry};

use super::register;

/// Output in flight, coalesced snapshot rounds and paused consumption
/// (docs/operations.md, "Back-pressure"). Cloning shares the metrics.
#[derive(Clone)]
pub struct OutputTelemetry {
    pub in_flight_records: IntGauge,
    pub in_flight_bytes: IntGauge,
    pub in_flight_peak_records: IntGauge,
    pub in_flight_peak_bytes: IntGauge,
    pub in_flight_limit_records: IntGauge,
    pub in_flight_limit_bytes: IntGauge,
    pub snapshot_rounds_skipped: IntCounter,
    pub customer_risk_pending: IntGauge,
    pub consumption_paused: IntGauge,
    pub consumption_paused_seconds: Counter,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid"))
}

impl OutputTelemetry {
    pub(super) fn new(r: &Registry) -> OutputTelemetry {
        OutputTelemetry {
            in_flight_records: gauge(
                r,
                "engaged_output_in_flight_records",
                "Records produced to the snapshot, customer-risk and dead-letter topics and not yet \
                 acknowledged by the broker (at most max_output_in_flight).",
            ),
            in_flight_bytes: gauge(
                r,
                "engaged_output_in_flight_bytes",
                "Bytes (keys, values, headers) of the records in flight (at most max_output_in_flight_bytes).",
            ),
            in_flight_peak_records: gauge(
                r,
                "engaged_output_in_flight_peak_records",
                "The most records that were in flight at once since the start.",
            ),
            in_flight_peak_bytes: gauge(
                r,
                "engaged_output_in_flight_peak_bytes",
                "The most bytes that were in flight at once since the start.",
            ),
            in_flight_limit_records: gauge(
                r,
                "engaged_output_in_flight_limit_records",
                "max_output_in_flight: the bound on records in flight.",
            ),
            in_flight_limit_bytes: gauge(
                r,
                "engaged_output_in_flight_limit_bytes",
                "max_output_in_flight_bytes: the bound on bytes in flight.",
            ),
            snapshot_rounds_skipped: register(
                r,
                IntCounter::new(
                    "engaged_snapshot_rounds_skipped_total",
                    "Snapshot rounds not written to the snapshot topic because the previous round \
                     was still in flight (the next round carries the current numbers; /metrics \
                     is updated every round regardless).",
                )
                .expect("valid"),
            ),
            customer_risk_pending: gauge(
                r,
                "engaged_customer_risk_pending_records",
                "Customers whose latest customer-risk record waits for room in flight (one per \
                 customer: a newer change replaces the waiting one).",
            ),
            consumption_paused: gauge(
                r,
                "engaged_consumption_paused",
                "1 while consumption is paused because output in flight is at its bound, else 0.",
            ),
            consumption_paused_seconds: register(
                r,
                Counter::new(
                    "engaged_consumption_paused_seconds_total",
                    "Time consumption was paused because output in flight was at its bound.",
                )
                .expect("valid"),
            ),
        }
    }
}
