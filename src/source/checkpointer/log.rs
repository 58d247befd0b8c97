//! Reading the checkpoint topic back to its end, as it stands when a task is restored.

use super::*;

/// The restore consumer reads to the end on purpose: end-of-partition is not an error.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::warn!(%error, reason, "checkpoint reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

impl Checkpointer {
    /// Reads the checkpoint topic to its end (last value per key wins).
    ///
    /// "The end" is the high watermark each partition's fetch responses report
    /// (exact on every broker; Tansu's ListOffsets is not), or end-of-partition
    /// where librdkafka reports it. Reading exactly to the end matters: a
    /// manifest older than the last one would restore older state while the
    /// group's committed offsets point past it.
    pub(super) fn read_log(&self, timeout: Duration) -> Result<CheckpointLog, CheckpointIoError> {
        let mut c = self.base.clone();
        c.set("group.id", format!("{}-restore", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<QuietEof> = c.create_with_context(QuietEof)?;
        let md = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(30))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(CheckpointIoError::MissingTopic(self.topic.clone()));
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut log = CheckpointLog::default();
        // Per partition: the next offset after the last record read.
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        let deadline = Instant::now() + timeout;
        let mut last_check = Instant::now();
        while at_end.len() < partitions.len() {
            if Instant::now() > deadline {
                return Err(CheckpointIoError::RestoreTimeout {
                    topic: self.topic.clone(),
                    timeout,
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    next.insert(m.partition(), m.offset() + 1);
                    if let Some(k) = m.key() {
                        log.record(k, m.payload());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading the checkpoint topic"),
                None => {}
            }
            // librdkafka does not always hand end-of-partition to `poll` (on Tansu it
            // sometimes arrives only as a global error event, without the partition):
            // compare with the fetched high watermark too, every few records.
            if last_check.elapsed() >= Duration::from_millis(50) {
                last_check = Instant::now();
                for &p in &partitions {
                    if at_end.contains(&p) {
                        continue;
                    }
                    if let Some((low, high)) = cached_watermarks(&consumer, &self.topic, p)
                        && high >= 0
                        && next.get(&p).copied().unwrap_or(0).max(low) >= high
                    {
                        at_end.insert(p);
                    }
                }
            }
        }
        Ok(log)
    }
}

/// The low and high watermarks of `topic`/`partition` that the consumer's last fetch
/// response reported, without asking the broker; `None` before the first fetch.
#[allow(unsafe_code)]
fn cached_watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives, `topic` is a
    // NUL-terminated string that outlives the call, and `low`/`high` are valid for
    // writes. The call only reads librdkafka's cached partition state.
    let err = unsafe {
        rdkafka_sys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return None;
    }
    // An unknown low watermark (not yet reported) counts as 0.
    Some((low.max(0), high))
}
