//! Kafka I/O of checkpoints: writes task state + applied offsets, reads them back on assignment.
//!
//! Synchronous on purpose: it runs inside librdkafka's rebalance callback (the
//! consumer must not fetch a partition before its task is restored) and in the
//! consumer loop between records, where nothing else may touch the state.
//! Encoding is `crate::checkpoint`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::delta::Form;
use crate::checkpoint::{self, CheckpointLog, Manifest, Piece};
use crate::pipeline::Pipeline;
use crate::state::{SavedTask, TopicPartition};

/// Largest chunk value; well under Kafka's default 1 MB message limit.
const CHUNK_BYTES: usize = 256 * 1024;
/// A task's chain of deltas is at most this long before the next save is a base.
const MAX_DELTAS: usize = 16;

mod log;

/// Whether a task's next save is a base or a delta on its last `chain`: a base
/// when it has none, when the chain is full, or when its deltas add up to half
/// the base (a restore then reads at most about 1.5 bases).
fn next_form(chain: Option<&Manifest>) -> Form {
    match chain {
        Some(m)
            if m.deltas.len() < MAX_DELTAS
                && m.deltas.iter().map(|d| d.bytes).sum::<u64>() < m.base.bytes / 2 =>
        {
            Form::Delta
        }
        _ => Form::Base,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointIoError {
    #[error("Kafka error on the checkpoint topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0} checkpoint record(s) were not acknowledged by the broker")]
    NotDelivered(u64),
    #[error("checkpoint topic `{0}` does not exist")]
    MissingTopic(String),
    #[error("reading checkpoint topic `{topic}` did not reach its end within {timeout:?}")]
    RestoreTimeout { topic: String, timeout: Duration },
    #[error("checkpoint writer: {0}")]
    Writer(String),
    #[error(transparent)]
    Record(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Counts failed deliveries, so a flush can tell whether everything was acknowledged.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "checkpoint record not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Progress {
    /// Next offset to consume, per input topic-partition, of what has been applied.
    applied: HashMap<TopicPartition, i64>,
    /// Records below these offsets are already in the restored state: skip them.
    restored: HashMap<TopicPartition, i64>,
    /// Tasks with records handled since their last checkpoint.
    dirty: BTreeSet<i32>,
    /// Per task, the manifest of its last save (the chain the next delta extends).
    chains: HashMap<i32, Manifest>,
    last_success: Option<Instant>,
}

/// How a checkpoint round is written (see [`Checkpointer::checkpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// On a writer thread; the offsets come back from a later call.
    Background,
    /// Now, waiting for the broker's acknowledgement (revoke, shutdown).
    Wait,
}

/// Serialised tasks on their way to the checkpoint topic.
struct Round {
    manifests: Vec<(i32, Manifest)>,
    /// Per saved base or delta: the key of its chunk `i`, its generation and its bytes
    /// (cut into chunks by the writer, not in the loop).
    pieces: Vec<(ChunkKey, u64, Vec<u8>)>,
    /// Bytes a restore of these tasks would read (bases and deltas).
    state_bytes: u64,
    started: Instant,
    serialised: Duration,
}

/// Where the chunks of one saved piece go.
struct ChunkKey {
    task: i32,
    slot: u8,
    /// `Some(j)`: delta `j` of the chain; `None`: the base.
    delta: Option<usize>,
}

impl ChunkKey {
    fn of(&self, group: &str, i: u32) -> String {
        match self.delta {
            None => checkpoint::chunk_key(group, self.task, self.slot, i),
            Some(j) => checkpoint::delta_chunk_key(group, self.task, self.slot, j, i),
        }
    }
}

/// A round the broker acknowledged.
struct Written {
    commit: Vec<(String, i32, i64)>,
    bases: u64,
    deltas: u64,
    written_bytes: u64,
    state_bytes: u64,
    serialised: Duration,
    duration: Duration,
}

type WriteResult = Result<Written, CheckpointIoError>;

/// Checkpoints of one consumer group member.
pub struct Checkpointer {
    group: String,
    topic: String,
    input_topics: Vec<String>,
    base: ClientConfig,
    producer: ThreadedProducer<DeliveryCounter>,
    progress: Mutex<Progress>,
    /// The round being written in the background, if any.
    writer: Mutex<Option<std::thread::JoinHandle<WriteResult>>>,
}

impl Checkpointer {
    /// `base` carries the bootstrap servers and the operator's common settings (the
    /// restore reader uses it), `producer` the same plus the operator's producer
    /// settings, which win over ours.
    pub fn new(
        base: ClientConfig,
        producer: &BTreeMap<String, String>,
        group: &str,
        topic: &str,
        input_topics: &[String],
    ) -> Result<Checkpointer, KafkaError> {
        let mut pc = base.clone();
        pc.set("linger.ms", "5").set("message.max.bytes", "1000000");
        for (k, v) in producer {
            pc.set(k, v);
        }
        let producer = pc.create_with_context(DeliveryCounter::default())?;
        Ok(Checkpointer {
            group: group.to_string(),
            topic: topic.to_string(),
            input_topics: input_topics.to_vec(),
            base,
            producer,
            progress: Mutex::new(Progress::default()),
            writer: Mutex::new(None),
        })
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records of `tp` below this offset are already part of the restored state
    /// (changes only in rebalances: a batch asks once per topic-partition).
    pub fn restored_up_to(&self, tp: &TopicPartition) -> Option<i64> {
        self.progress().restored.get(tp).copied()
    }

    /// A record was applied (or dead-lettered): its offset counts as done.
    pub fn applied(&self, tp: &TopicPartition, offset: i64) {
        let mut p = self.progress();
        p.applied.insert(tp.clone(), offset + 1);
        p.dirty.insert(tp.partition);
    }

    /// Next offset to consume of what has been applied on `tp`.
    pub fn applied_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.progress().applied.get(tp).copied()
    }

    /// Seconds since the last successful checkpoint.
    pub fn age(&self) -> Option<Duration> {
        self.progress().last_success.map(|t| t.elapsed())
    }

    /// Checkpoints the given tasks (all if `None`) that handled records since their
    /// last checkpoint, and returns the offsets to commit: those of every round
    /// the broker has acknowledged since the last call.
    ///
    /// The tasks are serialised here, in the consumer loop (the state must not
    /// change meanwhile), on one thread per core. Writing them — chunks, the
    /// broker's acknowledgement, manifests, acknowledgement again — is what takes
    /// long with a large state: with [`Write::Background`] it runs on a writer
    /// thread while the loop goes on (one round at a time: while one is in flight
    /// the call only collects), with [`Write::Wait`] (revoke, shutdown) this call
    /// first waits for a round in flight, then writes and waits for its own.
    pub fn checkpoint(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        tasks: Option<&[i32]>,
        write: Write,
    ) -> Result<Vec<(String, i32, i64)>, CheckpointIoError> {
        let mut commit = self.collect(pipeline, write == Write::Wait)?;
        if write == Write::Background && self.in_flight() {
            return Ok(commit);
        }
        let started = Instant::now();
        let round = self.serialise(pipeline, tasks, started)?;
        if round.manifests.is_empty() {
            // Nothing changed (and nothing is in flight): every last checkpoint is exact.
            self.progress().last_success = Some(Instant::now());
            return Ok(commit);
        }
        match write {
            Write::Wait => {
                let written = self.write(round)?;
                self.finished(pipeline, &written);
                commit.extend(written.commit);
            }
            Write::Background => {
                let this = Arc::clone(self);
                let handle = std::thread::Builder::new()
                    .name("checkpoint-writer".into())
                    .spawn(move || this.write(round))
                    .map_err(|e| CheckpointIoError::Writer(e.to_string()))?;
                *self.writer() = Some(handle);
            }
        }
        Ok(commit)
    }

    fn writer(&self) -> MutexGuard<'_, Option<std::thread::JoinHandle<WriteResult>>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight(&self) -> bool {
        self.writer().is_some()
    }

    /// The offsets of a round written in the background, once it is acknowledged
    /// (with `wait`, waits for it). A failed round is an error: the caller stops,
    /// and the next owner restores the last complete checkpoint.
    pub fn collect(
        &self,
        pipeline: &Pipeline,
        wait: bool,
    ) -> Result<Vec<(String, i32, i64)>, CheckpointIoError> {
        let mut slot = self.writer();
        let done = slot.as_ref().is_some_and(|h| h.is_finished());
        if !(done || wait) {
            return Ok(vec![]);
        }
        let Some(handle) = slot.take() else {
            return Ok(vec![]);
        };
        drop(slot);
        let written = handle
            .join()
            .map_err(|_| CheckpointIoError::Writer("the checkpoint writer panicked".into()))??;
        self.finished(pipeline, &written);
        Ok(written.commit)
    }

    /// Serialises the dirty tasks into a round and hands them over: they count as
    /// clean from now on (records applied later make them dirty again).
    fn serialise(
        &self,
        pipeline: &Pipeline,
        tasks: Option<&[i32]>,
        started: Instant,
    ) -> Result<Round, CheckpointIoError> {
        let mut p = self.progress();
        // Only tasks that handled records since their last checkpoint: the others'
        // last checkpoint is still exact.
        let tasks: Vec<i32> = match tasks {
            Some(t) => t.iter().copied().filter(|t| p.dirty.contains(t)).collect(),
            None => p.dirty.iter().copied().collect(),
        };
        let mut round = Round {
            manifests: vec![],
            pieces: vec![],
            state_bytes: 0,
            started,
            serialised: Duration::ZERO,
        };
        let forms: Vec<(i32, Form)> = tasks
            .iter()
            .map(|t| (*t, next_form(p.chains.get(t))))
            .collect();
        let saved = pipeline
            .engine()
            .save_tasks(&forms, crate::pipeline::state_threads());
        // `save_tasks` leaves out tasks without state: look each saved task's form up
        // rather than pair by position (assigned tasks get state at the first
        // snapshot tick, so a stateless dirty task is rare, but it would shift every
        // form after it).
        let forms: BTreeMap<i32, Form> = forms.into_iter().collect();
        for (task, state) in saved {
            let state = state?;
            // Always there (`save_tasks` returns only tasks it was given); a base is never wrong.
            let form = &forms.get(&task).copied().unwrap_or(Form::Base);
            let previous = p.chains.get(&task);
            let generation = previous.map_or(0, |m| m.generation) + 1;
            let piece = Piece {
                generation,
                chunks: checkpoint::chunk_count(state.len(), CHUNK_BYTES),
                bytes: state.len() as u64,
            };
            let offsets: BTreeMap<String, i64> = self
                .input_topics
                .iter()
                .filter_map(|t| {
                    let tp = TopicPartition::new(t, task);
                    p.applied.get(&tp).map(|o| (t.clone(), *o))
                })
                .collect();
            let written_at = chrono::Utc::now().timestamp_millis();
            let manifest = match (previous, form) {
                (Some(m), Form::Delta) => Manifest {
                    generation,
                    deltas: m.deltas.iter().copied().chain([piece]).collect(),
                    offsets,
                    written_at,
                    ..m.clone()
                },
                // A base goes to the slot the last manifest does not point to.
                (m, _) => Manifest {
                    generation,
                    slot: m.map_or(0, |m| 1 - m.slot),
                    base: piece,
                    deltas: vec![],
                    offsets,
                    written_at,
                },
            };
            round.state_bytes += manifest.bytes();
            let key = ChunkKey {
                task,
                slot: manifest.slot,
                delta: (*form == Form::Delta).then(|| manifest.deltas.len() - 1),
            };
            round.pieces.push((key, generation, state));
            round.manifests.push((task, manifest.clone()));
            p.chains.insert(task, manifest);
            p.dirty.remove(&task);
        }
        round.serialised = started.elapsed();
        pipeline
            .telemetry()
            .checkpoint_pause
            .observe(round.serialised.as_secs_f64());
        Ok(round)
    }

    /// Writes a round: chunks, acknowledgement, manifests, acknowledgement.
    fn write(&self, round: Round) -> WriteResult {
        let mut written_bytes = 0u64;
        let deltas = round.pieces.iter().filter(|p| p.0.delta.is_some()).count() as u64;
        let bases = round.pieces.len() as u64 - deltas;
        for (key, generation, state) in round.pieces {
            for (i, value) in checkpoint::chunk_values(generation, &state, CHUNK_BYTES)
                .iter()
                .enumerate()
            {
                self.send(&key.of(&self.group, i as u32), value)?;
                written_bytes += value.len() as u64;
            }
        }
        self.flush()?;
        let mut commit = vec![];
        for (task, m) in &round.manifests {
            let value = checkpoint::encode_manifest(m);
            self.send(&checkpoint::manifest_key(&self.group, *task), &value)?;
            for (topic, offset) in &m.offsets {
                commit.push((topic.clone(), *task, *offset));
            }
        }
        self.flush()?;
        Ok(Written {
            commit,
            bases,
            deltas,
            written_bytes,
            state_bytes: round.state_bytes,
            serialised: round.serialised,
            duration: round.started.elapsed(),
        })
    }

    fn finished(&self, pipeline: &Pipeline, w: &Written) {
        self.progress().last_success = Some(Instant::now());
        let t = pipeline.telemetry();
        t.checkpoint_duration.observe(w.duration.as_secs_f64());
        t.checkpoint_bytes_written.inc_by(w.written_bytes);
        t.checkpoint_pieces
            .with_label_values(&["base"])
            .inc_by(w.bases);
        t.checkpoint_pieces
            .with_label_values(&["delta"])
            .inc_by(w.deltas);
        t.checkpoint_state_bytes.set(w.state_bytes as i64);
        tracing::debug!(bytes = w.state_bytes, serialised = ?w.serialised, duration = ?w.duration, "checkpoint written");
    }

    /// Partitions of tasks kept through a rebalance: skip what was already applied.
    /// Returns where to resume them: the next offset after what was applied.
    pub fn keep(&self, tps: &[TopicPartition]) -> BTreeMap<TopicPartition, Offset> {
        let mut p = self.progress();
        let mut start = BTreeMap::new();
        for tp in tps {
            if let Some(a) = p.applied.get(tp).copied() {
                p.restored.insert(tp.clone(), a);
                start.insert(tp.clone(), Offset::Offset(a));
            }
        }
        start
    }

    /// Tasks revoked: forget their progress (the next owner restores them).
    pub fn forget(&self, tasks: &[i32]) {
        let mut p = self.progress();
        p.applied.retain(|tp, _| !tasks.contains(&tp.partition));
        p.restored.retain(|tp, _| !tasks.contains(&tp.partition));
        for t in tasks {
            p.dirty.remove(t);
            p.chains.remove(t);
        }
    }

    fn send(&self, key: &str, value: &[u8]) -> Result<(), CheckpointIoError> {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn flush(&self) -> Result<(), CheckpointIoError> {
        self.producer.flush(Duration::from_secs(30))?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(CheckpointIoError::NotDelivered(failed));
        }
        Ok(())
    }

    /// Restores the given tasks from their last complete checkpoint, if any, and
    /// returns the offsets to start consuming at: the checkpointed next offset of
    /// every input topic-partition of a restored task ([`Offset::Beginning`] for an
    /// input it had never read). Tasks without a checkpoint start empty and are not
    /// in the result (the group's committed offsets, or `auto.offset.reset`).
    pub fn restore(
        &self,
        pipeline: &Pipeline,
        tasks: &[i32],
        timeout: Duration,
    ) -> Result<BTreeMap<TopicPartition, Offset>, CheckpointIoError> {
        let mut start = BTreeMap::new();
        if tasks.is_empty() {
            return Ok(start);
        }
        let started = Instant::now();
        let log = self.read_log(timeout)?;
        let read = started.elapsed();
        let mut found = vec![];
        for &task in tasks {
            let Some(m) = log.manifest(&self.group, task) else {
                continue;
            };
            let m = m?;
            let state = log.state(&self.group, task, &m)?;
            found.push((task, m, state));
        }
        let states: Vec<SavedTask<'_>> = found
            .iter()
            .map(|(t, _, s)| SavedTask {
                partition: *t,
                base: &s.base,
                deltas: s.deltas.iter().map(Vec::as_slice).collect(),
            })
            .collect();
        pipeline.restore_tasks(&states)?;
        let mut p = self.progress();
        for (task, m, _) in &found {
            for topic in &self.input_topics {
                let tp = TopicPartition::new(topic, *task);
                match m.offsets.get(topic) {
                    Some(offset) => {
                        p.restored.insert(tp.clone(), *offset);
                        p.applied.insert(tp.clone(), *offset);
                        start.insert(tp, Offset::Offset(*offset));
                    }
                    None => {
                        start.insert(tp, Offset::Beginning);
                    }
                }
            }
            p.chains.insert(*task, m.clone());
        }
        pipeline
            .telemetry()
            .restore_duration
            .set(started.elapsed().as_secs_f64());
        tracing::info!(tasks = ?tasks, restored = found.len(), read = ?read, elapsed = ?started.elapsed(), "restored from checkpoints");
        Ok(start)
    }
}

/// Shared handle for the consumer context and the loop.
pub type SharedCheckpointer = Arc<Checkpointer>;
