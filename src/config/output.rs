//! Validation of the bounds on output in flight (`max_output_in_flight`, `max_output_in_flight_bytes`).

use super::{ConfigError, RawConfig, bytes, invalid};

impl RawConfig {
    /// `max_output_in_flight` and `max_output_in_flight_bytes`, validated.
    pub(super) fn output_bounds(&self) -> Result<(usize, u64), ConfigError> {
        if self.max_output_in_flight == 0 {
            return Err(invalid(
                "max_output_in_flight",
                0,
                "at least 1 (output records produced and not yet acknowledged)",
            ));
        }
        let key = "max_output_in_flight_bytes";
        let value = &self.max_output_in_flight_bytes;
        let bytes = bytes(key, value)?;
        if bytes < MIN_OUTPUT_IN_FLIGHT_BYTES {
            return Err(invalid(
                key,
                value,
                "at least 1MiB, so that the largest Kafka record (`message.max.bytes`, 1 MB by \
                 default) fits",
            ));
        }
        Ok((self.max_output_in_flight, bytes))
    }
}

/// The least `max_output_in_flight_bytes`: one record of librdkafka's default
/// `message.max.bytes` must fit.
const MIN_OUTPUT_IN_FLIGHT_BYTES: u64 = 1 << 20;
