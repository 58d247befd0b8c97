//! Avro object container files read block by block, their datums decoded by the fast plan.
//!
//! A container file is the magic `Obj\x01`, a metadata map (`avro.schema`, the
//! writer schema; `avro.codec`, `null` or `deflate` here), a 16-byte sync
//! marker, then blocks: a datum count, a byte size, the (compressed) datums end
//! to end, and the sync marker again. [`Blocks`] streams the blocks of any
//! `io::Read` (one block in memory at a time) and [`Datums`] decodes one datum
//! after another with the writer's compiled plan, straight into events — where
//! apache-avro's reader builds a generic `Value` per record first.
//!
//! Nothing here panics on a hostile file: every length is bounded before it
//! allocates ([`MAX_METADATA_BYTES`], [`MAX_BLOCK_BYTES`], inflating with the
//! same limit), and a structural error ends the file with that error.

use std::io::Read;
use std::sync::Arc;

use super::reader::Reader;
use super::{DecodeError, Decoder, SchemaError, SchemaOrigin, Writer};
use crate::event::Event;

/// Largest metadata value (the writer schema's JSON text) read from a header.
pub const MAX_METADATA_BYTES: usize = 16 << 20;
/// Largest block, compressed or not.
pub const MAX_BLOCK_BYTES: usize = 1 << 30;

const MAGIC: &[u8; 4] = b"Obj\x01";

/// How a file's blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Null,
    /// Raw deflate (RFC 1951), as the Avro specification says.
    Deflate,
}

/// A container file's header.
#[derive(Debug, Clone)]
pub struct Header {
    /// `avro.schema`: the writer schema's JSON text.
    pub schema: String,
    /// `avro.codec` (absent means `null`); `None`: a codec this reader does not handle.
    pub codec: Option<Codec>,
    /// The codec's name as written.
    pub codec_name: String,
    sync: [u8; 16],
}

/// A zig-zag varint from `r`; `Ok(None)` at a clean end of input before its first byte.
fn read_long(r: &mut impl Read) -> Result<Option<i64>, String> {
    let (mut value, mut shift) = (0u64, 0u32);
    loop {
        let mut b = [0u8];
        match r.read(&mut b) {
            Ok(0) if shift == 0 => return Ok(None),
            Ok(0) => return Err("file truncated inside a number".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
        if shift > 63 {
            return Err("a number does not fit in 64 bits".into());
        }
        value |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(Some((value >> 1) as i64 ^ -((value & 1) as i64)));
        }
        shift += 7;
    }
}

fn long(r: &mut impl Read) -> Result<i64, String> {
    read_long(r)?.ok_or_else(|| "file truncated".to_string())
}

/// A length read from the file, at most `max`.
fn length(r: &mut impl Read, max: usize, what: &str) -> Result<usize, String> {
    let n = long(r)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("{what} of {n} bytes (at most {max} are read)"))
}

fn exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "file truncated".to_string(),
        _ => e.to_string(),
    })
}

/// What `bytes` allocates before the input shows it holds more.
const FIRST_READ: usize = 64 << 10;

fn bytes(r: &mut impl Read, max: usize, what: &str) -> Result<Vec<u8>, String> {
    let n = length(r, max, what)?;
    // The buffer grows with the bytes actually read: a length the file declares
    // but does not hold must not allocate (found by the `container` fuzz target).
    let mut v = Vec::with_capacity(n.min(FIRST_READ));
    r.take(n as u64)
        .read_to_end(&mut v)
        .map_err(|e| e.to_string())?;
    if v.len() < n {
        return Err("file truncated".into());
    }
    Ok(v)
}

impl Header {
    /// Reads the header from the start of a file.
    pub fn read(r: &mut impl Read) -> Result<Header, String> {
        let mut magic = [0u8; 4];
        exact(r, &mut magic)?;
        if &magic != MAGIC {
            return Err("no Avro object container magic (Obj\\x01) at the start".into());
        }
        let (mut schema, mut codec) = (None, None);
        loop {
            let mut count = long(r)?;
            if count == 0 {
                break;
            }
            if count < 0 {
                count = count.checked_neg().ok_or("bad metadata block count")?;
                long(r)?; // the block's size in bytes
            }
            for _ in 0..count {
                let key = bytes(r, MAX_METADATA_BYTES, "a metadata key")?;
                let value = bytes(r, MAX_METADATA_BYTES, "a metadata value")?;
                let slot = match key.as_slice() {
                    b"avro.schema" => &mut schema,
                    b"avro.codec" => &mut codec,
                    _ => continue,
                };
                *slot = Some(String::from_utf8(value).map_err(|e| e.to_string())?);
            }
        }
        let mut sync = [0u8; 16];
        exact(r, &mut sync)?;
        let codec_name = codec.unwrap_or_else(|| "null".to_string());
        let codec = match codec_name.as_str() {
            "null" => Some(Codec::Null),
            "deflate" => Some(Codec::Deflate),
            _ => None,
        };
        Ok(Header {
            schema: schema.ok_or("no avro.schema in the header")?,
            codec,
            codec_name,
            sync,
        })
    }
}

/// One block: its datum count and its (decompressed) datums.
#[derive(Debug)]
pub struct Block {
    pub count: u64,
    pub data: Vec<u8>,
}

/// The blocks of a container file after its header.
pub struct Blocks<R> {
    input: R,
    header: Header,
    codec: Codec,
}

impl<R: Read> Blocks<R> {
    /// Blocks of `input` (positioned after `header`); `None` for a codec not handled here.
    pub fn new(input: R, header: Header) -> Option<Blocks<R>> {
        let codec = header.codec?;
        Some(Blocks {
            input,
            header,
            codec,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next block, `Ok(None)` at the end of the file.
    pub fn next_block(&mut self) -> Result<Option<Block>, String> {
        let Some(count) = read_long(&mut self.input)? else {
            return Ok(None);
        };
        let count = u64::try_from(count).map_err(|_| format!("a block of {count} records"))?;
        let raw = bytes(&mut self.input, MAX_BLOCK_BYTES, "a block")?;
        let mut sync = [0u8; 16];
        exact(&mut self.input, &mut sync)?;
        if sync != self.header.sync {
            return Err("a block does not end with the file's sync marker".into());
        }
        let data = match self.codec {
            Codec::Null => raw,
            Codec::Deflate => {
                miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, MAX_BLOCK_BYTES)
                    .map_err(|e| format!("a deflate block does not inflate: {e:?}"))?
            }
        };
        // Every event datum takes at least one byte: a larger count is corrupt
        // (and would otherwise make a reader report records that are not there).
        if count > data.len() as u64 {
            return Err(format!(
                "a block claims {count} records in {} bytes",
                data.len()
            ));
        }
        Ok(Some(Block { count, data }))
    }
}

/// Decodes datums written with one writer schema, one after another.
pub struct Datums {
    writer: Arc<Writer>,
}

impl Datums {
    /// The fast decoder of `schema` (a writer schema's JSON text), or `Ok(None)`
    /// when only the generic path can read it.
    pub fn new(decoder: &Decoder, schema: &str, name: &str) -> Result<Option<Datums>, SchemaError> {
        let writer = Writer::build(
            SchemaOrigin::Topic(name.to_string()),
            schema,
            &decoder.readers,
            &super::reader_records()?,
        )?;
        Ok(writer.fast.is_some().then(|| Datums {
            writer: Arc::new(writer),
        }))
    }

    /// Decodes the datum at `at` of `data`: the event and where the next one starts.
    pub fn decode_at(&self, data: &[u8], at: usize) -> Result<(Event, usize), DecodeError> {
        let mut event = Event::empty(crate::event::EventKind::PageView);
        let next = self.decode_at_into(data, at, &mut event)?;
        Ok((event, next))
    }

    /// The kind of event of the datum at `at` of `data`, without decoding it.
    pub fn kind_at(&self, data: &[u8], at: usize) -> Option<crate::event::EventKind> {
        let plan = self.writer.fast.as_ref()?;
        plan.kind_at(&Reader::new(data, at))
    }

    /// Decodes the datum at `at` of `data` into `out` (reusing its strings'
    /// buffers, see [`super::Decoder::decode_into`]); where the next one starts.
    pub fn decode_at_into(
        &self,
        data: &[u8],
        at: usize,
        out: &mut Event,
    ) -> Result<usize, DecodeError> {
        let plan = self
            .writer
            .fast
            .as_ref()
            .ok_or_else(|| DecodeError::Malformed("no fast plan".into()))?;
        let mut r = Reader::new(data, at);
        plan.decode_into(&mut r, out)?;
        Ok(data.len() - r.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn with_len(out: &mut Vec<u8>, b: &[u8]) {
        crate::decode::encode::long(out, b.len() as i64);
        out.extend_from_slice(b);
    }

    /// A container file written by the specification: blocks of 10 datums.
    fn file(codec: &str, records: &[Event]) -> Vec<u8> {
        let sync = *b"0123456789abcdef";
        let mut out = MAGIC.to_vec();
        crate::decode::encode::long(&mut out, 2);
        with_len(&mut out, b"avro.schema");
        with_len(&mut out, EventKind::Purchase.schema_json().as_bytes());
        with_len(&mut out, b"avro.codec");
        with_len(&mut out, codec.as_bytes());
        crate::decode::encode::long(&mut out, 0);
        out.extend_from_slice(&sync);
        for chunk in records.chunks(10) {
            let data: Vec<u8> = chunk
                .iter()
                .flat_map(crate::decode::encode::datum)
                .collect();
            let data = match codec {
                "deflate" => miniz_oxide::deflate::compress_to_vec(&data, 6),
                _ => data,
            };
            crate::decode::encode::long(&mut out, chunk.len() as i64);
            with_len(&mut out, &data);
            out.extend_from_slice(&sync);
        }
        out
    }

    fn purchases(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::Purchase(crate::event::Purchase {
                    event_id: format!("e{i}"),
                    event_time: 1_700_000_000_000 + i as i64,
                    customer_id: format!("c{}", i % 7),
                    order_id: format!("o{i}"),
                    kind: crate::event::PurchaseType::Order,
                    amount_minor: 100 + i as i64,
                    currency: "EUR".into(),
                    cost_minor: None,
                    items: 1,
                    campaign_id: None,
                })
            })
            .collect()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Event>, String> {
        let decoder = Decoder::new(&Default::default()).map_err(|e| e.to_string())?;
        let mut input = bytes;
        let header = Header::read(&mut input)?;
        let datums = Datums::new(&decoder, &header.schema, "test")
            .map_err(|e| e.to_string())?
            .ok_or("no fast plan")?;
        let mut blocks = Blocks::new(input, header).ok_or("codec")?;
        let mut out = vec![];
        while let Some(b) = blocks.next_block()? {
            let mut at = 0;
            for _ in 0..b.count {
                let (e, next) = datums.decode_at(&b.data, at).map_err(|e| e.to_string())?;
                out.push(e);
                at = next;
            }
            if at != b.data.len() {
                return Err("bytes after a block's last datum".into());
            }
        }
        Ok(out)
    }

    #[test]
    fn null_and_deflate_files_read_back_every_record() {
        let events = purchases(100);
        for codec in ["null", "deflate"] {
            assert_eq!(read_all(&file(codec, &events)).unwrap(), events, "{codec}");
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let good = file("deflate", &purchases(40));
        for cut in 0..good.len() {
            let _ = read_all(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = std::panic::catch_unwind(|| read_all(&bad)).expect("no panic");
        }
        assert!(read_all(&good[..good.len() - 3]).is_err());
    }
}
