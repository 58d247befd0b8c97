//! Checkpoint records: one task's state plus the offsets it has applied, as chunks and a manifest.
//!
//! Pure encoding and decoding; the Kafka I/O is in `source::kafka`. A task
//! (partition number `p` of consumer group `g`) is written as
//!
//! * chunk records, key `g/p/slot/i`, value `generation (8 bytes LE) ++ bytes`,
//!   the serialised task state cut into pieces of at most `chunk_bytes`;
//! * then, once every chunk is acknowledged, a manifest record, key `g/p`,
//!   value a [`Manifest`]: generation, slot, chunk count and the next offset to
//!   consume of each input topic at partition `p`.
//!
//! Generations alternate between two slots, so a crash in the middle of
//! writing generation `n` only damages the slot that the last complete
//! manifest (generation `n - 1`) does not point to. Restore reads the topic to
//! its end keeping the last value per key — it never relies on compaction —
//! and a manifest is usable only when all its chunks carry its generation.
//! Only tasks that handled records since their last checkpoint are written, so
//! a checkpoint's cost follows which tasks changed (within a task, the whole
//! task state is rewritten: more partitions make smaller tasks).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What a task's last complete checkpoint consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    pub slot: u8,
    pub chunks: u32,
    /// Total bytes of state.
    pub bytes: u64,
    /// Input topic → next offset to consume at this partition number.
    pub offsets: BTreeMap<String, i64>,
    /// Wall-clock time of the checkpoint (ms), for the age gauge.
    pub written_at: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint manifest for {key} is unreadable: {reason}")]
    BadManifest { key: String, reason: String },
    #[error(
        "checkpoint of {key} generation {generation} is incomplete: chunk {chunk} is missing or from another generation"
    )]
    Incomplete {
        key: String,
        generation: u64,
        chunk: u32,
    },
}

pub fn manifest_key(group: &str, partition: i32) -> String {
    format!("{group}/{partition}")
}

pub fn chunk_key(group: &str, partition: i32, slot: u8, i: u32) -> String {
    format!("{group}/{partition}/{slot}/{i}")
}

pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    postcard::to_stdvec(m).expect("a manifest always serialises")
}

pub fn decode_manifest(key: &str, bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    postcard::from_bytes(bytes).map_err(|e| CheckpointError::BadManifest {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Cuts `state` into chunk values (generation header + piece).
pub fn chunk_values(generation: u64, state: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
    let size = chunk_bytes.max(1);
    let mut out: Vec<Vec<u8>> = state
        .chunks(size)
        .map(|piece| {
            let mut v = Vec::with_capacity(8 + piece.len());
            v.extend_from_slice(&generation.to_le_bytes());
            v.extend_from_slice(piece);
            v
        })
        .collect();
    if out.is_empty() {
        out.push(generation.to_le_bytes().to_vec());
    }
    out
}

/// The latest record per key of the checkpoint topic, filtered to one consumer group.
#[derive(Debug, Default)]
pub struct CheckpointLog {
    latest: HashMap<String, Vec<u8>>,
}

impl CheckpointLog {
    /// A record read from the checkpoint topic; later records replace earlier ones.
    pub fn record(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        match value {
            Some(v) => {
                self.latest.insert(key.to_string(), v.to_vec());
            }
            None => {
                self.latest.remove(key);
            }
        }
    }

    pub fn manifest(
        &self,
        group: &str,
        partition: i32,
    ) -> Option<Result<Manifest, CheckpointError>> {
        let key = manifest_key(group, partition);
        self.latest.get(&key).map(|v| decode_manifest(&key, v))
    }

    /// Reassembles the state a manifest points to.
    pub fn state(
        &self,
        group: &str,
        partition: i32,
        m: &Manifest,
    ) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(m.bytes as usize);
        for i in 0..m.chunks {
            let incomplete = || CheckpointError::Incomplete {
                key: manifest_key(group, partition),
                generation: m.generation,
                chunk: i,
            };
            let v = self
                .latest
                .get(&chunk_key(group, partition, m.slot, i))
                .ok_or_else(incomplete)?;
            if v.len() < 8 || v[..8] != m.generation.to_le_bytes() {
                return Err(incomplete());
            }
            out.extend_from_slice(&v[8..]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(generation: u64, chunks: u32, bytes: u64) -> Manifest {
        Manifest {
            generation,
            slot: (generation % 2) as u8,
            chunks,
            bytes,
            offsets: BTreeMap::from([("pageviews".into(), 42)]),
            written_at: 0,
        }
    }

    fn write(log: &mut CheckpointLog, generation: u64, state: &[u8], chunk: usize) -> Manifest {
        let values = chunk_values(generation, state, chunk);
        let m = manifest(generation, values.len() as u32, state.len() as u64);
        for (i, v) in values.iter().enumerate() {
            log.record(chunk_key("g", 3, m.slot, i as u32).as_bytes(), Some(v));
        }
        log.record(manifest_key("g", 3).as_bytes(), Some(&encode_manifest(&m)));
        m
    }

    #[test]
    fn state_round_trips_through_chunks() {
        let mut log = CheckpointLog::default();
        let state: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        write(&mut log, 1, &state, 64);
        let m = log.manifest("g", 3).unwrap().unwrap();
        assert_eq!(m.chunks, 16);
        assert_eq!(log.state("g", 3, &m).unwrap(), state);
        assert!(log.manifest("g", 4).is_none());
        assert!(log.manifest("other", 3).is_none());
    }

    #[test]
    fn a_crash_while_writing_keeps_the_previous_generation() {
        let mut log = CheckpointLog::default();
        write(&mut log, 1, b"first state", 4);
        write(&mut log, 2, b"second state", 4);
        // Generation 3 goes to slot 1 (generation 1's): its chunks land, its manifest does not.
        for (i, v) in chunk_values(3, b"third!", 4).iter().enumerate() {
            log.record(chunk_key("g", 3, 1, i as u32).as_bytes(), Some(v));
        }
        let m = log.manifest("g", 3).unwrap().unwrap();
        assert_eq!(m.generation, 2);
        assert_eq!(log.state("g", 3, &m).unwrap(), b"second state");
    }

    #[test]
    fn a_manifest_without_its_chunks_is_incomplete() {
        let mut log = CheckpointLog::default();
        let m = manifest(5, 2, 10);
        log.record(manifest_key("g", 3).as_bytes(), Some(&encode_manifest(&m)));
        log.record(
            chunk_key("g", 3, 1, 0).as_bytes(),
            Some(&chunk_values(5, b"abcde", 5)[0]),
        );
        log.record(
            chunk_key("g", 3, 1, 1).as_bytes(),
            Some(&chunk_values(4, b"fghij", 5)[0]),
        );
        assert_eq!(
            log.state("g", 3, &m),
            Err(CheckpointError::Incomplete {
                key: "g/3".into(),
                generation: 5,
                chunk: 1
            })
        );
        assert!(matches!(
            decode_manifest("k", &[0xff; 3]),
            Err(CheckpointError::BadManifest { .. })
        ));
    }
}
