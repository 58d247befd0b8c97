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
}

impl StateKind {
    pub const ALL: [StateKind; 7] = [
        StateKind::Customer,
        StateKind::OpenSession,
        StateKind::SessionDuration,
        StateKind::Message,
        StateKind::EventId,
        StateKind::WindowBucket,
        StateKind::DistinctPosition,
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
        }
    }

    /// Heap bytes one entry costs at most, hash-table slack and allocator
    /// rounding included (ids of up to 24 bytes; longer ids add their length).
    /// Measured by `tests/memory_model.rs`; docs/operations.md has the table.
    pub const fn bytes_per_entry(self) -> u64 {
        match self {
            StateKind::Customer => 640,
            StateKind::OpenSession => 400,
            StateKind::SessionDuration => 24,
            StateKind::Message => 400,
            StateKind::EventId => 100,
            StateKind::WindowBucket => 256,
            StateKind::DistinctPosition => 4,
        }
    }
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

    pub fn merge(&mut self, o: &StateSize) {
        for (a, b) in self.entries.iter_mut().zip(o.entries) {
            *a += b;
        }
    }
}
