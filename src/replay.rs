//! `engaged replay`: Avro object container files in, final per-window snapshots out as JSON lines.
//!
//! The files' records (one of the SPEC §1 records, or a union of them) are
//! processed in file order as one partition (`replay/0`) through the same
//! [`Pipeline`] as Kafka records. At end of input the watermark advances to
//! `--at` (default: the largest event time seen), which closes every session
//! that ended by then, and the snapshot of every window is printed. The clock-
//! skew check is off: replays are usually of the past. Rejected records are
//! counted, summarised on stderr and, with `--dead-letter FILE`, written there
//! as JSON lines with their reason.
//!
//! A file is decoded on a thread of its own, at most two chunks of
//! records ahead of the loop that applies them (the one partition's, in order),
//! so a replay on two cores takes about the time of applying alone.
//!
//! Files are read block by block with the fast decoder's plan for their writer
//! schema (`decode::container`, codecs `null` and `deflate`); other codecs and
//! schemas only apache-avro can read go through its generic reader. A record
//! that does not decode costs the rest of its block (where the next one starts
//! is unknown), each rejected with the reason, not the rest of the file.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::decode::container::{Blocks, Datums, Header};
use crate::decode::{Decoder, DecoderConfig};
use crate::event::{Event, EventKind, Millis};
use crate::pipeline::Pipeline;
use crate::snapshot::WindowSnapshot;
use crate::state::{CoreConfig, Engine, RejectReason, Rejection, TopicPartition};
use crate::telemetry::Telemetry;

/// The topic name replayed records are attributed to.
const TP_TOPIC: &str = "replay";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an Avro object container file: {reason}")]
    NotAvro { path: PathBuf, reason: String },
    #[error(
        "{path}: writer schema is not one of PageView, EmailEvent, Purchase, SurveyResponse or a union of them"
    )]
    UnknownSchema { path: PathBuf },
    #[error(
        "--at {at} is earlier than the watermark the input already reached ({watermark}); \
         choose a time at or after it, or leave --at out"
    )]
    AtBeforeWatermark { at: Millis, watermark: Millis },
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub files: Vec<PathBuf>,
    /// Final watermark; default: the largest event time seen.
    pub at: Option<Millis>,
    pub progress: bool,
    pub dead_letter: Option<PathBuf>,
    /// Write every customer's final churn risk here as JSON lines.
    pub customer_risks: Option<PathBuf>,
    /// Read every file with apache-avro's generic reader instead of the fast
    /// block reader (the reference, for tests and benchmarks).
    pub generic_decode: bool,
}

/// What a replay did, besides printing.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub consumed: u64,
    pub accepted: u64,
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    pub watermark: Option<Millis>,
    pub snapshots: Vec<WindowSnapshot>,
    /// The state held at the end, per kind (the memory model's entries).
    pub state: crate::state::memory::StateSize,
    /// Wall time of the final model fit, rescoring sweep and snapshot round.
    pub fit: std::time::Duration,
    pub sweep: std::time::Duration,
    pub snapshot: std::time::Duration,
}

/// The kinds a writer schema's records map to (one entry, or one per union branch).
fn kinds_of(schema: &Schema) -> Option<Vec<Option<EventKind>>> {
    match schema {
        Schema::Record(r) => Some(vec![EventKind::from_name(r.name.name())]),
        Schema::Union(u) => Some(
            u.variants()
                .iter()
                .map(|v| match v {
                    Schema::Record(r) => EventKind::from_name(r.name.name()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn to_event(kind: EventKind, v: Value) -> Result<Event, apache_avro::Error> {
    Ok(match kind {
        EventKind::PageView => Event::PageView(apache_avro::from_value(&v)?),
        EventKind::EmailEvent => Event::Email(apache_avro::from_value(&v)?),
        EventKind::Purchase => Event::Purchase(apache_avro::from_value(&v)?),
        EventKind::SurveyResponse => Event::Survey(apache_avro::from_value(&v)?),
    })
}

/// The records of one file, decoded, in file order.
trait Records {
    /// Decodes the next record into `out` (into the event already there when it
    /// has one: its strings' buffers are reused); `false` at the end.
    fn next_into(&mut self, out: &mut Result<Event, String>) -> bool;
}

/// apache-avro's reader: every record a new event.
struct Generic<I>(I);

impl<I: Iterator<Item = Result<Event, String>>> Records for Generic<I> {
    fn next_into(&mut self, out: &mut Result<Event, String>) -> bool {
        match self.0.next() {
            Some(r) => {
                *out = r;
                true
            }
            None => false,
        }
    }
}

/// Opens `path`: null- and deflate-coded files whose writer schema the fast plan
/// compiles are read block by block ([`FastRecords`]); anything else, or every
/// file with `generic`, through apache-avro's reader.
fn records_of(
    path: &PathBuf,
    decoder: &Decoder,
    generic: bool,
) -> Result<Box<dyn Records + Send>, ReplayError> {
    let open = || {
        File::open(path).map_err(|source| ReplayError::Open {
            path: path.clone(),
            source,
        })
    };
    let not_avro = |reason: String| ReplayError::NotAvro {
        path: path.clone(),
        reason,
    };
    if !generic {
        let mut input = BufReader::with_capacity(1 << 20, open()?);
        let header = Header::read(&mut input).map_err(not_avro)?;
        let datums = Datums::new(decoder, &header.schema, &path.display().to_string());
        if let (Ok(Some(datums)), Some(blocks)) = (datums, Blocks::new(input, header)) {
            return Ok(Box::new(FastRecords {
                blocks,
                datums,
                block: Vec::new(),
                at: 0,
                left: 0,
                lost: None,
                done: false,
                spares: Default::default(),
            }));
        }
    }
    let reader =
        apache_avro::Reader::new(BufReader::new(open()?)).map_err(|e| not_avro(e.to_string()))?;
    let kinds = kinds_of(reader.writer_schema())
        .ok_or_else(|| ReplayError::UnknownSchema { path: path.clone() })?;
    if kinds.iter().all(Option::is_none) {
        return Err(ReplayError::UnknownSchema { path: path.clone() });
    }
    Ok(Box::new(Generic(reader.map(move |value| {
        value.map_err(|e| e.to_string()).and_then(|v| {
            let (branch, v) = match v {
                Value::Union(b, inner) => (b as usize, *inner),
                other => (0, other),
            };
            let kind = kinds
                .get(branch)
                .copied()
                .flatten()
                .ok_or("record of an unknown type")?;
            to_event(kind, v).map_err(|e| e.to_string())
        })
    }))))
}

/// A file's records through the fast plan, one block in memory at a time.
///
/// A datum that does not decode is rejected, and so is every later datum of its
/// block, since where they start is unknown (each with the reason); the next
/// block starts afresh after the sync marker. A damaged block structure ends the
/// file with one rejected record saying why.
struct FastRecords<R> {
    blocks: Blocks<R>,
    datums: Datums,
    block: Vec<u8>,
    /// Where the block's next datum starts, and how many are left.
    at: usize,
    left: u64,
    /// Why the rest of the current block is lost.
    lost: Option<String>,
    done: bool,
    /// Events of each kind (by `EventKind as usize`) put aside: a chunk's slot
    /// about to get a record of another kind than it holds trades its event for
    /// one of the right kind, so decoding keeps reusing string buffers when a
    /// file interleaves kinds (instead of a new event, and new strings, at
    /// every change of kind).
    spares: [Vec<Event>; 4],
}

impl<R: std::io::Read> FastRecords<R> {
    /// Gives `event` the kind of the next datum, from the spares when it has another.
    fn match_kind(&mut self, event: &mut Event) {
        let Some(kind) = self.datums.kind_at(&self.block, self.at) else {
            return;
        };
        if event.kind() == kind {
            return;
        }
        let fresh = self.spares[kind as usize]
            .pop()
            .unwrap_or_else(|| Event::empty(kind));
        let old = std::mem::replace(event, fresh);
        self.spares[old.kind() as usize].push(old);
    }
}

impl<R: std::io::Read> Records for FastRecords<R> {
    fn next_into(&mut self, out: &mut Result<Event, String>) -> bool {
        loop {
            if self.left > 0 {
                self.left -= 1;
                if let Some(why) = &self.lost {
                    *out = Err(why.clone());
                    return true;
                }
                let decoded = match out {
                    Ok(event) => {
                        self.match_kind(event);
                        self.datums.decode_at_into(&self.block, self.at, event)
                    }
                    Err(_) => {
                        let mut event = Event::empty(EventKind::PageView);
                        let decoded = self.datums.decode_at_into(&self.block, self.at, &mut event);
                        *out = Ok(event);
                        decoded
                    }
                };
                match decoded {
                    Ok(next) => self.at = next,
                    Err(e) => {
                        self.lost = Some(format!(
                            "follows an undecodable record in its block ({e}): where it starts is unknown"
                        ));
                        *out = Err(e.to_string());
                    }
                }
                return true;
            }
            if self.done {
                return false;
            }
            match self.blocks.next_block() {
                Ok(Some(b)) => {
                    (self.block, self.at, self.left, self.lost) = (b.data, 0, b.count, None);
                }
                Ok(None) => {
                    self.done = true;
                    return false;
                }
                Err(e) => {
                    self.done = true;
                    *out = Err(format!("damaged container file: {e}"));
                    return true;
                }
            }
        }
    }
}

/// Records applied under one lock of the task.
const CHUNK: u64 = 4096;

/// Records between two evictions of what no window can show any more.
const EVICT_EVERY: u64 = 1 << 14;

/// Decoded chunks waiting for the apply loop at most.
const CHUNKS_AHEAD: usize = 2;

/// A chunk of decoded records: the first `n` of the vector (the rest are
/// events kept for their buffers).
type Chunk = (Vec<Result<Event, String>>, usize);

/// Decodes a file's records into chunks of at most [`CHUNK`] records, each ending
/// where the next eviction is due (counting from `consumed` records before the
/// file), and sends them to `full` until the file ends or the receiver is gone.
/// Chunks come back through `empty` to be decoded into again.
fn decode_chunks(
    mut records: Box<dyn Records + Send>,
    mut consumed: u64,
    full: &mpsc::SyncSender<Chunk>,
    empty: &mpsc::Receiver<Vec<Result<Event, String>>>,
) {
    loop {
        let mut chunk = empty.try_recv().unwrap_or_default();
        let room = (EVICT_EVERY - consumed % EVICT_EVERY).min(CHUNK) as usize;
        let mut n = 0;
        while n < room {
            if n == chunk.len() {
                chunk.push(Err(String::new()));
            }
            if !records.next_into(&mut chunk[n]) {
                break;
            }
            n += 1;
        }
        consumed += n as u64;
        if n == 0 || full.send((chunk, n)).is_err() {
            return;
        }
    }
}

/// Applies one chunk of records (`first_index` is its first record's index in
/// its file), counts them in `summary` and writes the rejected ones' dead letters;
/// evicts when the chunk ends where an eviction is due.
#[allow(clippy::too_many_arguments)]
fn apply_chunk(
    pipeline: &Pipeline,
    tp: &TopicPartition,
    chunk: &[Result<Event, String>],
    first_index: usize,
    path: &std::path::Path,
    summary: &mut ReplaySummary,
    max_time: &mut Option<Millis>,
    mut dead_letter: Option<&mut File>,
) -> Result<(), ReplayError> {
    let events: Vec<Result<&Event, Rejection>> = chunk
        .iter()
        .map(|d| {
            d.as_ref()
                .map_err(|e| Rejection::new(RejectReason::Undecodable, e.clone()))
        })
        .collect();
    for event in events.iter().flatten() {
        let t = event.event_time();
        *max_time = Some(max_time.map_or(t, |m| m.max(t)));
    }
    let results = pipeline.handle_events(tp, &events, None);
    summary.consumed += events.len() as u64;
    if summary.consumed.is_multiple_of(EVICT_EVERY) {
        // The final snapshot is at or after this watermark (an earlier `--at`
        // is refused below), so what no window can show from it on goes now,
        // as after every snapshot of `engaged run`: memory follows the
        // windows, not the length of the input.
        if let Some(w) = pipeline.engine().watermark_of(tp) {
            pipeline.engine().evict(w);
        }
    }
    for (i, result) in (first_index..).zip(results) {
        match result {
            Ok(()) => summary.accepted += 1,
            Err(r) => {
                *summary.rejected.entry(r.reason.as_str()).or_default() += 1;
                if let Some(f) = dead_letter.as_mut() {
                    let line = serde_json::json!({
                        "file": path.display().to_string(),
                        "index": i,
                        "reason": r.reason.as_str(),
                        "error": r.message,
                    });
                    writeln!(f, "{line}")?;
                }
            }
        }
    }
    Ok(())
}

/// Runs a replay and writes the final snapshots as JSON lines to `out`.
pub fn replay(
    mut core: CoreConfig,
    opts: &ReplayOptions,
    out: &mut impl Write,
) -> Result<ReplaySummary, ReplayError> {
    // One input: the files, as partition `replay/0`.
    core.input_topics = vec![TP_TOPIC.to_string()];
    let decoder = Decoder::new(&DecoderConfig::default())
        .expect("the built-in reader schemas compile (tested)");
    let pipeline = Pipeline::new(
        decoder,
        Engine::new(core),
        Arc::new(Telemetry::new()),
        None,
        i64::MAX,
    );
    let tp = TopicPartition::new(TP_TOPIC, 0);
    pipeline.assign(std::slice::from_ref(&tp), 0);

    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {human_pos} events ({per_sec}) {msg}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut shown = false;

    let mut dead_letter = match &opts.dead_letter {
        Some(p) => Some(File::create(p).map_err(|source| ReplayError::Open {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let mut summary = ReplaySummary::default();
    let mut max_time: Option<Millis> = None;
    for path in &opts.files {
        let records = records_of(path, &pipeline.decoder(), opts.generic_decode)?;
        bar.set_message(path.display().to_string());
        // Decoding runs on its own thread, a few chunks ahead of the apply loop
        // (which is one partition's, so one thread): on two cores a replay takes
        // about the apply's time instead of the sum of both. The chunks are those
        // a single thread would make, so nothing else changes.
        let from = summary.consumed;
        std::thread::scope(|scope| -> Result<(), ReplayError> {
            let (full_tx, full) = mpsc::sync_channel(CHUNKS_AHEAD);
            let (empty, empty_rx) = mpsc::channel();
            scope.spawn(move || decode_chunks(records, from, &full_tx, &empty_rx));
            let mut next_index = 0usize;
            for (chunk, n) in full {
                apply_chunk(
                    &pipeline,
                    &tp,
                    &chunk[..n],
                    next_index,
                    path,
                    &mut summary,
                    &mut max_time,
                    dead_letter.as_mut(),
                )?;
                next_index += n;
                bar.inc(n as u64);
                if opts.progress && !shown && started.elapsed() > Duration::from_secs(1) {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    shown = true;
                }
                // Back to the decoder, whose next records reuse its strings' buffers
                // (gone if it has finished the file).
                let _ = empty.send(chunk);
            }
            Ok(())
        })?;
    }
    bar.finish_and_clear();

    let reached = pipeline
        .engine()
        .watermarks()
        .into_iter()
        .find(|(t, _)| *t == tp)
        .and_then(|(_, w)| w);
    if let (Some(at), Some(w)) = (opts.at, reached)
        && at < w
    {
        return Err(ReplayError::AtBeforeWatermark { at, watermark: w });
    }
    let at = opts.at.or(max_time);
    if let Some(at) = at {
        pipeline.engine().advance(&tp, at);
        let started = std::time::Instant::now();
        match pipeline.fit_risk_model_at(at) {
            Some(Ok(m)) => pipeline.install_risk_model(m),
            Some(Err(e)) => eprintln!("churn model not fitted: {e}"),
            None => {}
        }
        summary.fit = started.elapsed();
        let started = std::time::Instant::now();
        pipeline.rescore_totals(at);
        summary.sweep = started.elapsed();
        let started = std::time::Instant::now();
        summary.snapshots = pipeline.snapshot_at(at, None);
        summary.snapshot = started.elapsed();
        if let Some(path) = &opts.customer_risks {
            let mut f = File::create(path).map_err(|source| ReplayError::Open {
                path: path.clone(),
                source,
            })?;
            if let Some(m) = pipeline.risk_model() {
                let threshold = pipeline.engine().config().risk_threshold;
                for r in pipeline.engine().customer_risks(at, &m, threshold) {
                    serde_json::to_writer(&mut f, &r).map_err(std::io::Error::other)?;
                    writeln!(f)?;
                }
            }
        }
        for s in &summary.snapshots {
            serde_json::to_writer(&mut *out, s).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
    }
    summary.watermark = at;
    summary.state = pipeline.engine().state_size();
    Ok(summary)
}
