//! Checkpoint records: one task's state plus the offsets it has applied, as a base, deltas and a manifest.
//!
//! Pure encoding and decoding; the Kafka I/O is in `source::checkpointer`. A
//! task (partition number `p` of consumer group `g`) is saved as a *base* (its
//! whole state) followed by *deltas* (what changed since the previous save, see
//! [`delta`]), each cut into chunk records of at most `chunk_bytes`:
//!
//! * base chunks, key `g/p/slot/i`; delta `j` of the chain on that base, key
//!   `g/p/slot/dj/i`; value `generation (8 bytes LE) ++ bytes`;
//! * then, once every chunk is acknowledged, a manifest record, key `g/p`,
//!   value a [`Manifest`]: the base, the deltas to apply on it in order, and the
//!   next offset to consume of each input topic at partition `p`.
//!
//! Bases alternate between two slots, and a delta goes to a key the last
//! complete manifest does not point to, so a crash in the middle of a save
//! only damages records nobody reads. Restore reads the topic to its end
//! keeping the last value per key — it never relies on compaction — and a
//! manifest is usable only when every chunk carries its piece's generation.
//! The key space is bounded (two slots, a bounded chain), so a compacted topic
//! stays small. Only tasks that handled records since their last checkpoint
//! are saved, and a delta's size follows the keys that changed.

pub mod delta;
pub mod dense;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Leads every manifest value, so a manifest of another layout is refused, not misread.
const MANIFEST_FORMAT: &[u8] = b"engaged-manifest/3\n";

/// One saved base or delta of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Piece {
    pub generation: u64,
    pub chunks: u32,
    pub bytes: u64,
}

/// What a task's last complete checkpoint consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// The generation of the newest piece (bases and deltas share one sequence).
    pub generation: u64,
    /// The slot of the base and its deltas.
    pub slot: u8,
    pub base: Piece,
    /// Applied on the base in this order.
    pub deltas: Vec<Piece>,
    /// Input topic → next offset to consume at this partition number.
    pub offsets: BTreeMap<String, i64>,
    /// Wall-clock time of the checkpoint (ms), for the age gauge.
    pub written_at: i64,
}

impl Manifest {
    /// Bytes of state a restore reads: the base and every delta.
    pub fn bytes(&self) -> u64 {
        self.base.bytes + self.deltas.iter().map(|d| d.bytes).sum::<u64>()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("checkpoint manifest for {key} is unreadable: {reason}")]
    BadManifest { key: String, reason: String },
    #[error(
        "checkpoint of {key} generation {generation} is incomplete: chunk {chunk} of {piece} is missing or from another generation"
    )]
    Incomplete {
        key: String,
        generation: u64,
        piece: String,
        chunk: u32,
    },
}

pub(crate) fn manifest_key(group: &str, partition: i32) -> String {
    format!("{group}/{partition}")
}

/// Key of chunk `i` of the base in `slot`.
pub(crate) fn chunk_key(group: &str, partition: i32, slot: u8, i: u32) -> String {
    format!("{group}/{partition}/{slot}/{i}")
}

/// Key of chunk `i` of delta number `j` (from 0) on the base in `slot`.
pub(crate) fn delta_chunk_key(group: &str, partition: i32, slot: u8, j: usize, i: u32) -> String {
    format!("{group}/{partition}/{slot}/d{j}/{i}")
}

pub(crate) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = MANIFEST_FORMAT.to_vec();
    out.extend(postcard::to_stdvec(m).expect("a manifest always serialises"));
    out
}

pub(crate) fn decode_manifest(key: &str, bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    let bad = |reason: String| CheckpointError::BadManifest {
        key: key.to_string(),
        reason,
    };
    let body = bytes.strip_prefix(MANIFEST_FORMAT).ok_or_else(|| {
        bad(format!(
            "it does not start with {:?} (written by an earlier version of engaged?)",
            String::from_utf8_lossy(MANIFEST_FORMAT)
        ))
    })?;
    postcard::from_bytes(body).map_err(|e| bad(e.to_string()))
}

/// How many chunks [`chunk_values`] cuts `len` bytes into.
pub(crate) fn chunk_count(len: usize, chunk_bytes: usize) -> u32 {
    len.div_ceil(chunk_bytes.max(1)).max(1) as u32
}

/// Cuts `state` into chunk values (generation header + piece).
pub(crate) fn chunk_values(generation: u64, state: &[u8], chunk_bytes: usize) -> Vec<Vec<u8>> {
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

/// A task's state as the manifest lists it: the base, then the deltas in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SavedState {
    pub base: Vec<u8>,
    pub deltas: Vec<Vec<u8>>,
}

/// The latest record per key of the checkpoint topic, filtered to one consumer group.
#[derive(Debug, Default)]
pub(crate) struct CheckpointLog {
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

    pub(crate) fn manifest(
        &self,
        group: &str,
        partition: i32,
    ) -> Option<Result<Manifest, CheckpointError>> {
        let key = manifest_key(group, partition);
        self.latest.get(&key).map(|v| decode_manifest(&key, v))
    }

    /// Reassembles one piece from the chunks under `key(i)`.
    fn piece(
        &self,
        group: &str,
        partition: i32,
        what: &str,
        piece: &Piece,
        key: impl Fn(u32) -> String,
    ) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(piece.bytes as usize);
        for i in 0..piece.chunks {
            let incomplete = || CheckpointError::Incomplete {
                key: manifest_key(group, partition),
                generation: piece.generation,
                piece: what.to_string(),
                chunk: i,
            };
            let v = self.latest.get(&key(i)).ok_or_else(incomplete)?;
            if v.len() < 8 || v[..8] != piece.generation.to_le_bytes() {
                return Err(incomplete());
            }
            out.extend_from_slice(&v[8..]);
        }
        Ok(out)
    }

    /// Reassembles the base and the deltas a manifest points to.
    pub fn state(
        &self,
        group: &str,
        partition: i32,
        m: &Manifest,
    ) -> Result<SavedState, CheckpointError> {
        let base = self.piece(group, partition, "the base", &m.base, |i| {
            chunk_key(group, partition, m.slot, i)
        })?;
        let deltas = m
            .deltas
            .iter()
            .enumerate()
            .map(|(j, d)| {
                self.piece(group, partition, &format!("delta {j}"), d, |i| {
                    delta_chunk_key(group, partition, m.slot, j, i)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SavedState { base, deltas })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a save like the checkpointer does: chunks of the piece, then the manifest.
    fn save(
        log: &mut CheckpointLog,
        previous: Option<&Manifest>,
        generation: u64,
        state: &[u8],
        delta: bool,
        chunk: usize,
    ) -> Manifest {
        let values = chunk_values(generation, state, chunk);
        let piece = Piece {
            generation,
            chunks: values.len() as u32,
            bytes: state.len() as u64,
        };
        let m = match (previous, delta) {
            (Some(p), true) => Manifest {
                generation,
                deltas: p.deltas.iter().copied().chain([piece]).collect(),
                ..p.clone()
            },
            (p, _) => Manifest {
                generation,
                slot: p.map_or(0, |p| 1 - p.slot),
                base: piece,
                deltas: vec![],
                offsets: BTreeMap::from([("pageviews".into(), generation as i64)]),
                written_at: 0,
            },
        };
        for (i, v) in values.iter().enumerate() {
            let key = if delta {
                delta_chunk_key("g", 3, m.slot, m.deltas.len() - 1, i as u32)
            } else {
                chunk_key("g", 3, m.slot, i as u32)
            };
            log.record(key.as_bytes(), Some(v));
        }
        log.record(manifest_key("g", 3).as_bytes(), Some(&encode_manifest(&m)));
        m
    }

    fn read(log: &CheckpointLog) -> SavedState {
        let m = log.manifest("g", 3).unwrap().unwrap();
        log.state("g", 3, &m).unwrap()
    }

    #[test]
    fn a_base_and_its_deltas_round_trip_through_chunks() {
        let mut log = CheckpointLog::default();
        let state: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let m1 = save(&mut log, None, 1, &state, false, 64);
        assert_eq!(m1.base.chunks, 16);
        for len in [0, 1, 63, 64, 65, 1000] {
            let values = chunk_values(7, &state[..len], 64);
            assert_eq!(chunk_count(len, 64) as usize, values.len(), "{len}");
        }
        let m2 = save(&mut log, Some(&m1), 2, b"first delta", true, 4);
        let m3 = save(&mut log, Some(&m2), 3, b"second", true, 4);
        assert_eq!(m3.deltas.len(), 2);
        assert_eq!(m3.bytes(), 1000 + 11 + 6);
        assert_eq!(
            read(&log),
            SavedState {
                base: state,
                deltas: vec![b"first delta".to_vec(), b"second".to_vec()]
            }
        );
        assert!(log.manifest("g", 4).is_none());
        assert!(log.manifest("other", 3).is_none());
    }

    #[test]
    fn a_crash_while_writing_keeps_the_previous_checkpoint() {
        let mut log = CheckpointLog::default();
        let m1 = save(&mut log, None, 1, b"first state", false, 4);
        let m2 = save(&mut log, Some(&m1), 2, b"second state", false, 4);
        let m3 = save(&mut log, Some(&m2), 3, b"delta", true, 4);
        // A new base goes to the other slot (generation 1's): its chunks land, its manifest does not.
        for (i, v) in chunk_values(4, b"third!", 4).iter().enumerate() {
            log.record(chunk_key("g", 3, 1 - m3.slot, i as u32).as_bytes(), Some(v));
        }
        // A delta after `m3` lands at a key `m3` does not list.
        for (i, v) in chunk_values(5, b"lost delta", 4).iter().enumerate() {
            log.record(
                delta_chunk_key("g", 3, m3.slot, 1, i as u32).as_bytes(),
                Some(v),
            );
        }
        assert_eq!(log.manifest("g", 3).unwrap().unwrap(), m3);
        assert_eq!(
            read(&log),
            SavedState {
                base: b"second state".to_vec(),
                deltas: vec![b"delta".to_vec()]
            }
        );
    }

    #[test]
    fn a_manifest_without_its_chunks_is_incomplete() {
        let mut log = CheckpointLog::default();
        let m1 = save(&mut log, None, 1, b"base", false, 4);
        let m2 = save(&mut log, Some(&m1), 2, b"delta", true, 4);
        // Delta 0 of the same slot rewritten by a later chain: another generation.
        log.record(
            delta_chunk_key("g", 3, m2.slot, 0, 1).as_bytes(),
            Some(&chunk_values(9, b"x", 4)[0]),
        );
        assert_eq!(
            log.state("g", 3, &m2),
            Err(CheckpointError::Incomplete {
                key: "g/3".into(),
                generation: 2,
                piece: "delta 0".into(),
                chunk: 1
            })
        );
        log.record(chunk_key("g", 3, m2.slot, 0).as_bytes(), None);
        assert!(matches!(
            log.state("g", 3, &m2),
            Err(CheckpointError::Incomplete { chunk: 0, .. })
        ));
        assert!(matches!(
            decode_manifest("k", &[0xff; 3]),
            Err(CheckpointError::BadManifest { .. })
        ));
        // A manifest of the layout before bases and deltas is refused with a reason.
        let old = postcard::to_stdvec(&(1u64, 0u8, 1u32, 4u64)).unwrap();
        let err = decode_manifest("g/3", &old).unwrap_err().to_string();
        assert!(err.contains("earlier version"), "{err}");
    }
}
