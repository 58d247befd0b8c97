//! The engine: every task's state behind its own lock, applied to by workers and read by snapshots, checkpoints and sweeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use super::task::{InputState, TaskState, decode_task, encode_task};
use super::{CoreConfig, RejectReason, Rejection, StateError, TopicPartition, memory};
use crate::checkpoint::delta::{Form, Merge};
use crate::event::{Event, Millis};
use crate::metrics::Dim;
use crate::metrics::churn_risk::{RiskModel, Sweep};
use crate::metrics::family::WindowAggregates;
use crate::metrics::web::DurationHistogram;

/// Applies events to sharded task state and reads window aggregates out of it.
///
/// `Engine` is `Sync`: workers apply events to different tasks at once, and the
/// snapshot reads. Each task has its own lock, taken once per batch of its
/// records ([`Engine::with_task`]); the map of tasks is locked only to find one.
pub struct Engine {
    cfg: Arc<CoreConfig>,
    tasks: DashMap<i32, Arc<Mutex<TaskState>>>,
    /// One name per configured input topic, shared by every [`TopicPartition`]
    /// [`Engine::topic_partition`] makes: a task finds its input by pointer.
    topics: Vec<Arc<str>>,
}

fn lock(task: &Mutex<TaskState>) -> MutexGuard<'_, TaskState> {
    task.lock().unwrap_or_else(|e| e.into_inner())
}

/// One task, locked: applies events to it ([`Engine::with_task`]).
pub(crate) struct TaskApplier<'a> {
    cfg: &'a CoreConfig,
    task: &'a mut TaskState,
}

impl TaskApplier<'_> {
    /// Validates and applies one decoded event from `topic` of this task. Rejected events change nothing.
    pub fn apply(&mut self, topic: &Arc<str>, event: &Event) -> Result<(), Rejection> {
        event.validate()?;
        if let Event::Purchase(p) = event
            && p.currency != self.cfg.currency
        {
            return Err(Rejection::new(
                RejectReason::Invalid,
                format!(
                    "currency {:?} is not the configured currency {:?}",
                    p.currency, self.cfg.currency
                ),
            ));
        }
        self.task.apply(self.cfg, topic, event)
    }
}

/// A task's saved state: a base, then the deltas saved after it, in order.
pub struct SavedTask<'a> {
    pub partition: i32,
    pub base: &'a [u8],
    pub deltas: Vec<&'a [u8]>,
}

/// `f` over `items` on up to `threads` scoped threads, results in input order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break done };
                        done.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            // A worker's panic is a bug, not bad input: re-raise it with its own message.
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Customers a rescoring sweep scores per lock of a task (about 1 µs each).
pub(crate) const RESCORE_CHUNK: u32 = 4096;
/// Rows one thread scores at a time: a chunk spreads over up to 16 threads.
const SCORE_CHUNK: usize = 256;

impl Engine {
    pub fn new(cfg: CoreConfig) -> Engine {
        Engine {
            topics: cfg
                .input_topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            cfg: Arc::new(cfg),
            tasks: DashMap::new(),
        }
    }

    /// `topic`'s partition `partition`, its name shared with every other made
    /// here when `topic` is a configured input (the edges make one per batch).
    pub fn topic_partition(&self, topic: &str, partition: i32) -> TopicPartition {
        match self.topics.iter().find(|t| ***t == *topic) {
            Some(t) => TopicPartition {
                topic: t.clone(),
                partition,
            },
            None => TopicPartition::new(topic, partition),
        }
    }

    /// Locks `task` and closes what is due in it ([`TaskState::settle`]): what
    /// every read and save of task state goes through, so none sees what
    /// [`TaskState::apply`] let wait.
    fn settled<'a>(&self, task: &'a Mutex<TaskState>) -> MutexGuard<'a, TaskState> {
        let mut guard = lock(task);
        guard.settle(&self.cfg);
        guard
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The task of `partition`, created empty on first use.
    fn task(&self, partition: i32) -> Arc<Mutex<TaskState>> {
        if let Some(t) = self.tasks.get(&partition) {
            return t.clone();
        }
        self.tasks
            .entry(partition)
            .or_insert_with(|| Arc::new(Mutex::new(TaskState::new(&self.cfg))))
            .clone()
    }

    /// Runs `f` with the task of `partition` locked: a worker applies a batch of
    /// the task's records under one lock, while other workers apply other tasks.
    pub(crate) fn with_task<R>(
        &self,
        partition: i32,
        f: impl FnOnce(&mut TaskApplier<'_>) -> R,
    ) -> R {
        let task = self.task(partition);
        let mut guard = lock(&task);
        f(&mut TaskApplier {
            cfg: &self.cfg,
            task: &mut guard,
        })
    }

    /// Validates and applies one decoded event from `tp`. Rejected events change nothing.
    pub fn apply(&self, tp: &TopicPartition, event: &Event) -> Result<(), Rejection> {
        self.with_task(tp.partition, |t| t.apply(&tp.topic, event))
    }

    /// Moves `tp`'s watermark to at least `watermark` (end of a replay).
    pub fn advance(&self, tp: &TopicPartition, watermark: Millis) {
        let task = self.task(tp.partition);
        let mut task = lock(&task);
        let cfg = &self.cfg;
        let input = task
            .inputs
            .entry(tp.topic.clone())
            .or_insert_with(|| InputState::new(cfg));
        input.clock.advance_to(watermark);
        task.on_watermark(cfg);
    }

    /// Marks `tp` idle or active (the edge decides, from `idle_timeout`); an idle
    /// input does not hold its task's closing watermark back.
    pub(crate) fn set_idle(&self, tp: &TopicPartition, idle: bool) {
        let task = self.task(tp.partition);
        let mut task = lock(&task);
        let input = task
            .inputs
            .entry(tp.topic.clone())
            .or_insert_with(|| InputState::new(&self.cfg));
        if input.idle != idle {
            input.idle = idle;
            task.on_watermark(&self.cfg);
        }
    }

    /// The watermark of every topic-partition that has state.
    pub fn watermarks(&self) -> Vec<(TopicPartition, Option<Millis>)> {
        let lateness = self.cfg.allowed_lateness_ms;
        let mut out = vec![];
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            for (topic, input) in &task.inputs {
                out.push((
                    TopicPartition {
                        topic: topic.clone(),
                        partition: *entry.key(),
                    },
                    input.clock.watermark(lateness),
                ));
            }
        }
        out.sort();
        out
    }

    /// The watermark of `tp`, if it has accepted anything (or was advanced).
    pub fn watermark_of(&self, tp: &TopicPartition) -> Option<Millis> {
        let task = self.tasks.get(&tp.partition)?;
        let task = lock(task.value());
        let input = task.inputs.get(&tp.topic)?;
        input.clock.watermark(self.cfg.allowed_lateness_ms)
    }

    /// Drops a task's state (its partitions were revoked).
    pub(crate) fn drop_task(&self, partition: i32) {
        self.tasks.remove(&partition);
    }

    /// The latest watermark any task was evicted at (snapshots must not go earlier).
    pub(crate) fn evicted_at(&self) -> Option<Millis> {
        self.tasks
            .iter()
            .filter_map(|t| lock(t.value()).evicted_at)
            .max()
    }

    /// The partition numbers that have state.
    pub fn tasks(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.tasks.iter().map(|t| *t.key()).collect();
        v.sort();
        v
    }

    /// Serialises one task's state (for a checkpoint) as a base or as a delta of
    /// what changed since its last save; `None` if it has no state.
    pub fn save_task(&self, partition: i32, form: Form) -> Option<Result<Vec<u8>, StateError>> {
        let task = self.tasks.get(&partition)?.value().clone();
        let mut task = self.settled(&task);
        Some(encode_task(&mut task, form))
    }

    /// Serialises several tasks, on up to `threads` threads (tasks are
    /// independent); tasks without state are left out.
    pub fn save_tasks(
        &self,
        tasks: &[(i32, Form)],
        threads: usize,
    ) -> Vec<(i32, Result<Vec<u8>, StateError>)> {
        parallel_map(tasks, threads, |&(p, form)| {
            self.save_task(p, form).map(|r| (p, r))
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Replaces one task's state with a saved base.
    pub fn restore_task(&self, partition: i32, bytes: &[u8]) -> Result<(), StateError> {
        self.restore_tasks(
            &[SavedTask {
                partition,
                base: bytes,
                deltas: vec![],
            }],
            1,
        )
    }

    /// Replaces several tasks' state with saved ones (a base and its deltas),
    /// decoding on up to `threads` threads. Nothing is installed unless every
    /// task decodes.
    pub fn restore_tasks(&self, saved: &[SavedTask<'_>], threads: usize) -> Result<(), StateError> {
        let decoded = parallel_map(saved, threads, |s| {
            let p = s.partition;
            let mut task = decode_task(p, s.base, Form::Base)?;
            for (i, d) in s.deltas.iter().enumerate() {
                let newer = decode_task(p, d, Form::Delta)?;
                task.merge(newer).map_err(|e| {
                    StateError::Decode(format!(
                        "task {p}: delta {} of {}: {e}",
                        i + 1,
                        s.deltas.len()
                    ))
                })?;
            }
            task.restored();
            // The restored state is the last save: the next delta starts from it.
            task.saved();
            Ok((p, task))
        });
        let decoded: Vec<(i32, TaskState)> = decoded.into_iter().collect::<Result<_, _>>()?;
        for (p, task) in decoded {
            self.tasks.insert(p, Arc::new(Mutex::new(task)));
        }
        Ok(())
    }

    /// Sums every window `i` with `bounds[i] = Some((start, end))` over every
    /// task, locking each task once (for the whole snapshot round).
    pub(crate) fn aggregate_windows(
        &self,
        bounds: &[Option<(Millis, Millis)>],
    ) -> Vec<WindowAggregates> {
        let mut aggs = vec![WindowAggregates::default(); bounds.len()];
        for p in self.tasks() {
            let Some(task) = self.tasks.get(&p).map(|t| t.value().clone()) else {
                continue;
            };
            let mut task = self.settled(&task);
            for (idx, (agg, b)) in aggs.iter_mut().zip(bounds).enumerate() {
                let Some((start, end)) = *b else {
                    continue;
                };
                for f in task.families.all_mut() {
                    f.collect(idx, start, end, agg);
                }
            }
        }
        aggs
    }

    /// Open sessions now, per dimension, over every task.
    pub(crate) fn open_sessions(&self) -> HashMap<Dim, u64> {
        let mut open = HashMap::new();
        for entry in self.tasks.iter() {
            let task = self.settled(entry.value());
            task.families.web.collect_open(&mut open);
        }
        open
    }

    /// Repeat-purchase histories at `at` for fitting (a uniform sample of about
    /// `sample` customers when there are more; 0 = all): `(x, t_x, T)` rows and
    /// `(x, mean repeat value)` rows of repeat buyers.
    pub fn risk_histories(
        &self,
        at: Millis,
        sample: usize,
    ) -> (Vec<crate::model::History>, Vec<(u32, f64)>) {
        let total: usize = self
            .tasks
            .iter()
            .map(|t| lock(t.value()).families.risk.customers())
            .sum();
        let keep_below = crate::metrics::churn_risk::sample_threshold(sample, total);
        let (mut rfm, mut spend) = (vec![], vec![]);
        for entry in self.tasks.iter() {
            let task = lock(entry.value());
            task.families.risk.histories(
                &task.customer_ids,
                at,
                self.cfg.state_ttl_ms,
                keep_below,
                &mut rfm,
                &mut spend,
            );
        }
        (rfm, spend)
    }

    /// Rescores every customer of every task with a fitted model (a sweep).
    ///
    /// Each task is visited in chunks of [`RESCORE_CHUNK`] customer numbers, its
    /// lock taken once per chunk: a sweep may run beside the workers applying
    /// records (in the background, off the snapshot) and delays a task's records
    /// by one chunk at most. Tasks in partition order, customers in number order;
    /// a chunk's rows are scored on up to `threads` threads (scoring is a pure
    /// function of a row, and the totals are added in row order).
    pub fn rescore(&self, r: &crate::metrics::churn_risk::Rescore<'_>, threads: usize) -> Sweep {
        let mut sweep = Sweep::default();
        for p in self.tasks() {
            let Some(task) = self.tasks.get(&p).map(|t| t.value().clone()) else {
                continue;
            };
            let mut from = 0u32;
            loop {
                let mut guard = lock(&task);
                let task = &mut *guard;
                let len = u32::try_from(task.customer_ids.len()).unwrap_or(u32::MAX);
                if from >= len {
                    break;
                }
                let to = len.min(from.saturating_add(RESCORE_CHUNK));
                let risk = &mut task.families.risk;
                let rows = risk.rows(from..to, r);
                let scored: Vec<_> = parallel_map(
                    &rows.chunks(SCORE_CHUNK).collect::<Vec<_>>(),
                    threads,
                    |rows| rows.iter().map(|row| r.score(row)).collect::<Vec<_>>(),
                )
                .into_iter()
                .flatten()
                .collect();
                sweep.merge(risk.apply(&task.customer_ids, &rows, &scored, r));
                from = to;
            }
        }
        sweep
    }

    /// Every customer's risk at `at` (replay), by task then customer id.
    pub fn customer_risks(
        &self,
        at: Millis,
        model: &RiskModel,
        threshold: f64,
    ) -> Vec<crate::metrics::churn_risk::CustomerRisk> {
        let mut out = vec![];
        for p in self.tasks() {
            if let Some(task) = self.tasks.get(&p) {
                let task = lock(task.value());
                out.extend(task.families.risk.risks(
                    &task.customer_ids,
                    at,
                    model,
                    threshold,
                    self.cfg.state_ttl_ms,
                ));
            }
        }
        out
    }

    /// The cumulative session-duration histogram over every task.
    pub(crate) fn duration_histogram(&self) -> DurationHistogram {
        let mut h = DurationHistogram::default();
        for entry in self.tasks.iter() {
            let task = self.settled(entry.value());
            h.merge(task.families.web.histogram());
        }
        h
    }

    /// Drops buckets no window can show again once the instance watermark is `watermark`.
    pub fn evict(&self, watermark: Millis) {
        for entry in self.tasks.iter() {
            let mut task = self.settled(entry.value());
            task.evicted_at = Some(task.evicted_at.map_or(watermark, |e| e.max(watermark)));
            let lower_bound = task.closing_watermark(&self.cfg);
            for (idx, spec) in self.cfg.windows.iter().enumerate() {
                let (start, end) = spec.bounds_at(watermark);
                for f in task.families.all_mut() {
                    f.evict(idx, start, end, lower_bound);
                }
            }
            // After the families forgot what they could: numbers left without state are released.
            if let (Some(ttl), Some(f)) = (self.cfg.state_ttl_ms, lower_bound) {
                task.expire_customers(f, ttl);
            }
        }
    }

    /// Entries per kind of state over every task, for the memory accounting ([`memory`]).
    pub fn state_size(&self) -> memory::StateSize {
        use memory::StateKind;
        let mut size = memory::StateSize::default();
        for entry in self.tasks.iter() {
            let t = self.settled(entry.value());
            size.add(StateKind::Customer, t.customer_ids.live());
            let ids: usize = t.inputs.values().map(|i| i.dedup.len()).sum();
            size.add(StateKind::EventId, ids);
            t.families.all().iter().for_each(|f| f.account(&mut size));
        }
        size
    }

    /// Entries held in state (open sessions, buckets, remembered ids), for the state-size gauge.
    pub fn state_entries(&self) -> usize {
        self.tasks
            .iter()
            .map(|t| {
                let t = self.settled(t.value());
                t.families.all().iter().map(|f| f.size()).sum::<usize>()
                    + t.customer_ids.len()
                    + t.inputs.values().map(|i| i.dedup.len()).sum::<usize>()
            })
            .sum()
    }
}
