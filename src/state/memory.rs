//! The memory model: what each kind of state entry costs, and the state's accounting by kind.
//!
//! State grows with a few countable things — customers, open sessions, closed
//! sessions still inside a window, remembered email messages and event ids —
//! plus per-task structures fixed by the configuration (window buckets, the
//! distinct counters' difference rings). Each kind has a documented cost in
//! bytes ([`StateKind::bytes_per_entry`]), measured with a counting allocator
//! by `tests/memory_model.rs` (which fails when an entry costs more than its
//! model says). `/metrics` publishes entries and estimated bytes per kind
//! (`engaged_state_kind_entries{kind}`, `engaged_state_memory_bytes{kind}`), and
//! docs/operations.md turns the model into sizing rules.

/// A kind of state entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    /// A customer id seen by a task, with its per-customer state (id, distinct
    /// counters' buckets, activity run, first ORDER, churn-model history).
    Customer,
    /// An open web session (its visitor, site, channel and close-queue entry).
    OpenSession,
    /// A closed session's duration kept for exact percentiles, per window and
    /// dimension (`all`, site, channel) while the window can show it.
    SessionDuration,
    /// A remembered email message (its campaign and counted event times).
    Message,
    /// An accepted `event_id` remembered for `dedup_window`.
    EventId,
    /// One bucket of a window ring of any family (with its breakdowns).
    WindowBucket,
    /// One position of a distinct counter's difference ring (dense pages).
    DistinctPosition,
    /// A label value a task names (site, channel, page, campaign: at most
    /// `max_label_values` of each), or its counts in one window bucket (the
    /// breakdown maps' spare capacity included: staging slots keep theirs).
    LabelValue,
}

impl StateKind {
    pub const ALL: [StateKind; 8] = [
        StateKind::Customer,
        StateKind::OpenSession,
        StateKind::SessionDuration,
        StateKind::Message,
        StateKind::EventId,
        StateKind::WindowBucket,
        StateKind::DistinctPosition,
        StateKind::LabelValue,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Customer => "customer",
            StateKind::OpenSession => "open_session",
            StateKind::SessionDuration => "session_duration",
            StateKind::Message => "message",
            StateKind::EventId => "event_id",
            StateKind::WindowBucket => "window_bucket",
            StateKind::DistinctPosition => "distinct_position",
            StateKind::LabelValue => "label_value",
        }
    }

    /// Heap bytes one entry costs at most, hash-table slack and allocator
    /// rounding included (ids of up to 24 bytes; longer ids add their length).
    /// Measured by `tests/memory_model.rs`; docs/operations.md has the table.
    pub const fn bytes_per_entry(self) -> u64 {
        match self {
            StateKind::Customer => 320,
            StateKind::OpenSession => 400,
            StateKind::SessionDuration => 24,
            StateKind::Message => 240,
            StateKind::EventId => 100,
            StateKind::WindowBucket => 256,
            StateKind::DistinctPosition => 4,
            StateKind::LabelValue => 512,
        }
    }
}

/// Window rings per window in one task: web, email, commerce, survey, churn, risk crossings.
const RINGS_PER_WINDOW: u64 = 6;

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// The state one task holds whatever its traffic, at most: its window rings and
/// the distinct counters' difference rings, which the configuration sizes
/// (`windows`, `allowed_lateness`, `churn_horizon`), not the data.
///
/// A window of length `W` and bucket `b` keeps up to `W / b` buckets per ring. Its
/// active and purchasing counters keep positions from the window end to the
/// newest event plus `W` (`(W + lateness) / b`); its "alive at the start" counter
/// from the window start to the newest event plus the horizon `H`, at buckets of
/// `gcd(b, H)` (`(W + H + lateness) / gcd(b, H)`).
pub(crate) fn fixed_bytes_per_task(cfg: &super::CoreConfig) -> u64 {
    let (lateness, horizon) = (cfg.allowed_lateness_ms, cfg.churn_horizon_ms);
    let (mut buckets, mut positions) = (0u64, 0u64);
    for w in &cfg.windows {
        let (len, b) = (w.length_ms, w.bucket_ms.max(1));
        buckets += (len / b + 2) as u64 * RINGS_PER_WINDOW;
        positions += 2 * ((len + lateness) / b + 2) as u64;
        positions += ((len + horizon + lateness) / gcd(b, horizon).max(1) + 2) as u64;
    }
    buckets * StateKind::WindowBucket.bytes_per_entry()
        + positions * StateKind::DistinctPosition.bytes_per_entry()
}

/// Entries per kind of state, summed over tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    entries: [u64; StateKind::ALL.len()],
}

impl StateSize {
    pub fn add(&mut self, kind: StateKind, n: usize) {
        self.entries[kind as usize] += n as u64;
    }

    pub fn entries(&self, kind: StateKind) -> u64 {
        self.entries[kind as usize]
    }

    /// Estimated heap bytes of `kind`: entries × the model's bytes per entry.
    pub fn bytes(&self, kind: StateKind) -> u64 {
        self.entries(kind) * kind.bytes_per_entry()
    }

    /// Estimated heap bytes of the whole state.
    pub fn total_bytes(&self) -> u64 {
        StateKind::ALL.iter().map(|k| self.bytes(*k)).sum()
    }
}

/// `kind entries (≈ MB), …` for the kinds held, and the total.
impl std::fmt::Display for StateSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        for k in StateKind::ALL {
            if self.entries(k) > 0 {
                write!(
                    f,
                    "{} {} (≤ {:.1} MB), ",
                    k.as_str(),
                    self.entries(k),
                    mb(self.bytes(k))
                )?;
            }
        }
        write!(f, "≤ {:.1} MB in all", mb(self.total_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CoreConfig;
    use crate::window::WindowSpec;

    #[test]
    fn the_default_configuration_fixes_a_few_megabytes_per_task() {
        let cfg = CoreConfig::default();
        let bytes = fixed_bytes_per_task(&cfg);
        // Dominated by the 5m window's "alive" counter: 90 days at 5 s, 4 bytes each.
        assert!((6_000_000..9_000_000).contains(&bytes), "{bytes}");
        // Seconds-long buckets over a month cost gigabytes.
        let fine = CoreConfig {
            windows: vec![WindowSpec {
                name: "30d".into(),
                length_ms: 30 * 86_400_000,
                bucket_ms: 1_000,
            }],
            ..CoreConfig::default()
        };
        assert!(fixed_bytes_per_task(&fine) > 2 << 30);
    }
}
