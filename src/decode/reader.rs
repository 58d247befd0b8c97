//! A bounds-checked cursor over Avro binary data: zig-zag varints, length-prefixed
//! bytes and strings, and skipping of any writer type the reader does not want.
//!
//! Every read checks the remaining length first and reports where the data broke;
//! nothing here can panic or loop without consuming input.

use super::DecodeError;

/// How deep skipped data may nest (records in unions in arrays ...). Only a
/// recursive writer schema can nest deeper than its own text, one byte per
/// level, so this bounds stack use on hostile input.
pub(crate) const MAX_DEPTH: usize = 64;

#[derive(Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, starting at `pos` (offsets in errors count from the
    /// start of `buf`, i.e. of the whole Kafka payload).
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            offset: self.pos,
            needed: needed.saturating_sub(self.remaining()),
        }
    }

    /// Takes the next `n` bytes.
    #[inline(always)]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(n)),
        }
    }

    /// A zig-zag varint `long`: at most 10 bytes, the 10th holding only one bit.
    #[inline(always)]
    pub fn long(&mut self) -> Result<i64, DecodeError> {
        // One byte (lengths, union branches, enum symbols): no loop.
        if let Some(&byte) = self.buf.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            let v = u64::from(byte);
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
        self.long_from_bytes()
    }

    /// [`Reader::long`] of two bytes or more (or none left).
    fn long_from_bytes(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.truncated(1));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(DecodeError::VarintOverflow { offset: start });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            shift += 7;
        }
    }

    /// A zig-zag varint `int` (decoded as a long, then range-checked, as Java
    /// and apache-avro do).
    #[inline]
    pub fn int(&mut self) -> Result<i32, DecodeError> {
        let start = self.pos;
        let v = self.long()?;
        i32::try_from(v)
            .map_err(|_| DecodeError::Malformed(format!("int {v} out of range at byte {start}")))
    }

    /// A non-negative length or count prefix.
    #[inline(always)]
    fn len(&mut self) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.long()?;
        usize::try_from(n).map_err(|_| negative_length(n, start))
    }

    /// `bytes` (or the raw bytes of a `string`).
    #[inline(always)]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    /// A `string` (or `bytes` promoted to string) borrowed from the datum, which
    /// must be UTF-8. Inlined, with its errors built out of line: a third of
    /// the decoder's instructions went to this call's frame and result.
    #[inline(always)]
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let raw = self.bytes()?;
        ascii_or_utf8(raw).map_err(|e| not_utf8(start, e))
    }

    /// A union branch index, checked against the number of branches.
    #[inline(always)]
    pub fn branch(&mut self, branches: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let i = self.long()?;
        match usize::try_from(i) {
            Ok(i) if i < branches => Ok(i),
            _ => Err(DecodeError::BadUnionIndex {
                index: i,
                branches,
                offset,
            }),
        }
    }

    /// An enum symbol index, checked against the writer's symbol count.
    #[inline]
    pub fn enum_index(&mut self, symbols: usize) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let i = self.int()?;
        match usize::try_from(i) {
            Ok(i) if i < symbols => Ok(i),
            _ => Err(DecodeError::Malformed(format!(
                "enum index {i} at byte {offset} is not below the writer's {symbols} symbols"
            ))),
        }
    }

    /// Skips one value of the given shape.
    pub fn skip(&mut self, s: &Skip, table: &[Skip], depth: usize) -> Result<(), DecodeError> {
        match s {
            Skip::Nothing => Ok(()),
            Skip::Varint => self.long().map(drop),
            Skip::Fixed(n) => self.take(*n).map(drop),
            Skip::Bytes => self.bytes().map(drop),
            Skip::Array(item) => self.skip_blocks(item, None, table, depth),
            Skip::Map(value) => self.skip_blocks(value, Some(&Skip::Bytes), table, depth),
            Skip::Union(branches) => {
                let b = self.branch(branches.len())?;
                self.skip(&branches[b], table, deeper(depth, self.pos)?)
            }
            Skip::Record(fields) => {
                let d = deeper(depth, self.pos)?;
                fields.iter().try_for_each(|f| self.skip(f, table, d))
            }
            Skip::Ref(i) => match table.get(*i) {
                Some(t) => self.skip(t, table, deeper(depth, self.pos)?),
                None => Err(DecodeError::Malformed(format!(
                    "internal: no named type #{i}"
                ))),
            },
        }
    }

    /// Array/map blocks: a count, then that many items, until a zero count. A
    /// negative count is followed by the block's size in bytes, which lets us jump.
    fn skip_blocks(
        &mut self,
        item: &Skip,
        key: Option<&Skip>,
        table: &[Skip],
        depth: usize,
    ) -> Result<(), DecodeError> {
        let depth = deeper(depth, self.pos)?;
        loop {
            let at = self.pos;
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                let size = self.len()?;
                self.take(size)?;
                continue;
            }
            let count = count as u64;
            // An item that took no bytes (null, empty record, fixed(0)) is a type
            // that always takes none: don't spin through a huge count.
            let before = self.pos;
            if let Some(k) = key {
                self.skip(k, table, depth)?;
            }
            self.skip(item, table, depth)?;
            if self.pos == before {
                continue;
            }
            if let Skip::Fixed(n) = item
                && key.is_none()
            {
                let rest = (count - 1)
                    .checked_mul(*n as u64)
                    .and_then(|b| usize::try_from(b).ok())
                    .ok_or(DecodeError::Malformed(format!(
                        "array block of {count} items at byte {at} is too large"
                    )))?;
                self.take(rest)?;
                continue;
            }
            // Every remaining item takes at least one byte, so this loop is
            // bounded by the input length.
            for _ in 1..count {
                if let Some(k) = key {
                    self.skip(k, table, depth)?;
                }
                self.skip(item, table, depth)?;
            }
        }
    }
}

fn deeper(depth: usize, offset: usize) -> Result<usize, DecodeError> {
    if depth >= MAX_DEPTH {
        Err(DecodeError::TooDeep { offset })
    } else {
        Ok(depth + 1)
    }
}

/// How to step over a value the reader does not want.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Skip {
    /// `null`, and `fixed(0)`.
    Nothing,
    /// `int`, `long`, `enum`.
    Varint,
    /// `boolean` (1), `float` (4), `double` (8), `fixed(n)`.
    Fixed(usize),
    /// `bytes`, `string`.
    Bytes,
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Box<[Skip]>),
    Record(Box<[Skip]>),
    /// A named record, looked up in a table so that recursive schemas work.
    Ref(usize),
}

#[cold]
#[inline(never)]
fn negative_length(n: i64, start: usize) -> DecodeError {
    DecodeError::Malformed(format!("negative length {n} at byte {start}"))
}

#[cold]
#[inline(never)]
fn not_utf8(start: usize, e: std::str::Utf8Error) -> DecodeError {
    DecodeError::Malformed(format!("string at byte {start} is not UTF-8: {e}"))
}

/// `raw` as a `str`: ids, sites, channels and URLs are nearly always ASCII,
/// which `is_ascii` checks a word at a time; `std::str::from_utf8` walks a
/// short slice byte by byte (9% of a mixed replay's instructions went there).
/// Everything else is validated by std.
#[inline]
fn ascii_or_utf8(raw: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if is_ascii(raw) {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        #[allow(unsafe_code)]
        return Ok(unsafe { std::str::from_utf8_unchecked(raw) });
    }
    std::str::from_utf8(raw)
}

/// `raw.is_ascii()` without a call for strings up to 64 bytes (ids are 10–40):
/// their 8-byte words OR-ed together, the last one overlapping, have no high
/// bit. std's loop costs ~30 instructions and a call per string, two per event.
#[inline(always)]
fn is_ascii(raw: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = raw.len();
    let word = |i: usize| u64::from_ne_bytes(raw[i..i + 8].try_into().unwrap_or([0xff; 8]));
    match n {
        0..=3 => raw.iter().fold(0, |acc, &b| acc | b) < 0x80,
        4..=7 => {
            let half = |i: usize| u32::from_ne_bytes(raw[i..i + 4].try_into().unwrap_or([0xff; 4]));
            (half(0) | half(n - 4)) & 0x8080_8080 == 0
        }
        8..=64 => {
            let mut any = word(n - 8);
            let mut i = 0;
            while i + 8 < n {
                any |= word(i);
                i += 8;
            }
            any & HIGH == 0
        }
        _ => raw.is_ascii(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zz(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if n < 0x80 {
                out.push(n as u8);
                return out;
            }
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let b = zz(v);
            let mut r = Reader::new(&b, 0);
            assert_eq!(r.long().unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn varint_overflow_is_an_error() {
        // 11 bytes of continuation.
        let b = [0xffu8; 11];
        assert!(matches!(
            Reader::new(&b, 0).long(),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
        // 10th byte with more than one bit.
        let mut b = vec![0x80u8; 9];
        b.push(0x02);
        assert!(matches!(
            Reader::new(&b, 0).long(),
            Err(DecodeError::VarintOverflow { .. })
        ));
        // 10th byte = 1 is the largest legal value.
        let mut b = vec![0xffu8; 9];
        b.push(0x01);
        assert_eq!(Reader::new(&b, 0).long().unwrap(), i64::MIN);
        // An int that needs more than 32 bits.
        let b = zz(i64::from(i32::MAX) + 1);
        assert!(matches!(
            Reader::new(&b, 0).int(),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn lengths_are_checked_before_slicing() {
        let mut b = zz(5);
        b.extend_from_slice(b"abc");
        assert!(matches!(
            Reader::new(&b, 0).str(),
            Err(DecodeError::Truncated {
                offset: 1,
                needed: 2
            })
        ));
        let b = zz(-3);
        assert!(matches!(
            Reader::new(&b, 0).bytes(),
            Err(DecodeError::Malformed(_))
        ));
        let mut b = zz(i64::MAX);
        b.push(0);
        assert!(matches!(
            Reader::new(&b, 0).bytes(),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = zz(2);
        b.extend_from_slice(&[0xc3, 0x28]);
        assert!(matches!(
            Reader::new(&b, 0).str(),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn strings_are_valid_exactly_when_std_says_so() {
        // ASCII of every length up to ten words; the same with a byte above 0x7f,
        // or a 2-byte character, anywhere in it.
        let mut rng = crate::testing::xorshift(7);
        for len in 0..80usize {
            for _ in 0..20 {
                let ascii: Vec<u8> = (0..len).map(|_| rng(0x80) as u8).collect();
                assert_eq!(ascii_or_utf8(&ascii).ok(), std::str::from_utf8(&ascii).ok());
                for at in 0..len {
                    let mut lone = ascii.clone();
                    lone[at] = 0x80 | rng(0x80) as u8;
                    // A byte above 0x7f among ASCII bytes is never UTF-8.
                    assert!(ascii_or_utf8(&lone).is_err());
                    assert!(std::str::from_utf8(&lone).is_err());
                    let mut pair = ascii.clone();
                    pair.splice(at..at, "é".bytes());
                    assert_eq!(
                        ascii_or_utf8(&pair),
                        Ok(std::str::from_utf8(&pair).unwrap())
                    );
                }
            }
        }
    }

    #[test]
    fn huge_arrays_of_empty_items_are_skipped_without_spinning() {
        let mut b = zz(i64::MAX);
        b.extend(zz(0));
        let mut r = Reader::new(&b, 0);
        r.skip(&Skip::Array(Box::new(Skip::Nothing)), &[], 0)
            .unwrap();
        assert_eq!(r.remaining(), 0);
        // Same through a named empty record.
        let mut r = Reader::new(&b, 0);
        let table = [Skip::Record(Box::new([]))];
        r.skip(&Skip::Array(Box::new(Skip::Ref(0))), &table, 0)
            .unwrap();
        // Fixed-size items jump; a count too large for the input is truncation.
        let mut b = zz(1 << 40);
        b.extend([0u8; 16]);
        let mut r = Reader::new(&b, 0);
        assert!(matches!(
            r.skip(&Skip::Array(Box::new(Skip::Fixed(8))), &[], 0),
            Err(DecodeError::Truncated { .. } | DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn blocks_with_byte_sizes_and_maps_are_skipped() {
        // Array of longs written as one block with a negative count and a size.
        let mut b = zz(-2);
        b.extend(zz(2));
        b.extend(zz(7));
        b.extend(zz(-9));
        b.extend(zz(0));
        b.push(0x42);
        let mut r = Reader::new(&b, 0);
        r.skip(&Skip::Array(Box::new(Skip::Varint)), &[], 0)
            .unwrap();
        assert_eq!(r.remaining(), 1);
        // map<string, double> with two entries.
        let mut b = zz(2);
        for k in ["a", "bc"] {
            b.extend(zz(k.len() as i64));
            b.extend(k.as_bytes());
            b.extend(1.5f64.to_le_bytes());
        }
        b.extend(zz(0));
        let mut r = Reader::new(&b, 0);
        r.skip(&Skip::Map(Box::new(Skip::Fixed(8))), &[], 0)
            .unwrap();
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn recursion_is_bounded() {
        // record Node { next: ["null", Node] } with 1000 levels of nesting.
        let table = [Skip::Record(Box::new([Skip::Union(Box::new([
            Skip::Nothing,
            Skip::Ref(0),
        ]))]))];
        let mut b = vec![2u8; 1000];
        b.push(0);
        let mut r = Reader::new(&b, 0);
        assert!(matches!(
            r.skip(&Skip::Ref(0), &table, 0),
            Err(DecodeError::TooDeep { .. })
        ));
        let b = [2u8, 2, 0];
        let mut r = Reader::new(&b, 0);
        r.skip(&Skip::Ref(0), &table, 0).unwrap();
        assert_eq!(r.remaining(), 0);
    }
}
