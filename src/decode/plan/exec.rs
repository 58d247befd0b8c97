//! Running a plan: one datum read into an [`Event`], straight into its fields where the record is ours ([`direct_into`]), else through slots.

use super::*;

pub(super) fn exec<'a>(
    read: &Read,
    r: &mut Reader<'a>,
    field: &'static str,
) -> Result<Val<'a>, DecodeError> {
    Ok(match read {
        Read::Null => Val::Null,
        Read::Int => Val::Int(r.int()?),
        Read::IntToLong => Val::Long(i64::from(r.int()?)),
        Read::Long => Val::Long(r.long()?),
        Read::Str => Val::Str(Cow::Borrowed(r.str()?)),
        Read::Enum {
            map,
            writer_symbols,
        } => {
            let i = r.enum_index(map.len())?;
            match map[i] {
                Some(v) => Val::Enum(v),
                None => {
                    return Err(DecodeError::UnknownEnumSymbol {
                        field,
                        symbol: writer_symbols.get(i).cloned().unwrap_or_default(),
                    });
                }
            }
        }
        Read::Union(branches) => {
            let b = r.branch(branches.len())?;
            match &branches[b] {
                Ok(read) => exec(read, r, field)?,
                Err(why) => {
                    return Err(DecodeError::UnreadableBranch {
                        field,
                        branch: b,
                        reason: why.clone(),
                    });
                }
            }
        }
    })
}

impl RecordPlan {
    /// Reads the datum's fields into slots (strings borrowed from the datum,
    /// defaults from the plan).
    pub(super) fn run<'x, 'a: 'x>(
        &'x self,
        r: &mut Reader<'a>,
        table: &[Skip],
    ) -> Result<Slots<'x>, DecodeError> {
        let mut slots = Slots::default();
        for op in &self.ops {
            match op {
                Op::Skip(s) => r.skip(s, table, 0)?,
                Op::Read { slot, field, read } => {
                    let v = exec(read, r, field)?;
                    slots.put(*slot, v)?;
                }
            }
        }
        for (slot, v) in &self.defaults {
            slots.put(*slot, v.borrowed())?;
        }
        Ok(slots)
    }
}

#[derive(Default)]
pub(super) struct Slots<'a>([Val<'a>; MAX_FIELDS]);

pub(super) fn internal(slot: usize, v: &Val<'_>) -> DecodeError {
    DecodeError::Malformed(format!("internal: slot {slot} holds {v:?}"))
}

impl<'a> Slots<'a> {
    fn put(&mut self, slot: usize, v: Val<'a>) -> Result<(), DecodeError> {
        match self.0.get_mut(slot) {
            Some(s) => {
                *s = v;
                Ok(())
            }
            None => Err(internal(slot, &v)),
        }
    }
    fn take(&mut self, slot: usize) -> Val<'a> {
        self.0.get_mut(slot).map(std::mem::take).unwrap_or_default()
    }
    fn string(&mut self, slot: usize) -> Result<Cow<'a, str>, DecodeError> {
        match self.take(slot) {
            Val::Str(s) => Ok(s),
            v => Err(internal(slot, &v)),
        }
    }
    fn opt_string(&mut self, slot: usize) -> Result<Option<Cow<'a, str>>, DecodeError> {
        match self.take(slot) {
            Val::Str(s) => Ok(Some(s)),
            Val::Null => Ok(None),
            v => Err(internal(slot, &v)),
        }
    }
    fn long(&mut self, slot: usize) -> Result<i64, DecodeError> {
        match self.take(slot) {
            Val::Long(n) => Ok(n),
            v => Err(internal(slot, &v)),
        }
    }
    fn opt_long(&mut self, slot: usize) -> Result<Option<i64>, DecodeError> {
        match self.take(slot) {
            Val::Long(n) => Ok(Some(n)),
            Val::Null => Ok(None),
            v => Err(internal(slot, &v)),
        }
    }
    fn int(&mut self, slot: usize) -> Result<i32, DecodeError> {
        match self.take(slot) {
            Val::Int(n) => Ok(n),
            v => Err(internal(slot, &v)),
        }
    }
    fn symbol<T: Copy>(&mut self, slot: usize, symbols: &[T]) -> Result<T, DecodeError> {
        match self.take(slot) {
            Val::Enum(i) => symbols
                .get(i as usize)
                .copied()
                .ok_or_else(|| internal(slot, &Val::Enum(i))),
            v => Err(internal(slot, &v)),
        }
    }
}

/// `dst` becomes `src`, in `dst`'s buffer.
pub(super) fn set(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

/// `dst` becomes `src`, in `dst`'s buffer when it has one.
pub(super) fn set_opt(dst: &mut Option<String>, src: Option<Cow<'_, str>>) {
    match (dst.as_mut(), src) {
        (Some(d), Some(s)) => set(d, &s),
        (None, Some(s)) => *dst = Some(s.into_owned()),
        (_, None) => *dst = None,
    }
}

/// An optional string (`["null", "string"]`) into `dst`'s buffer.
#[inline(always)]
pub(super) fn read_opt_str(
    r: &mut Reader<'_>,
    dst: &mut Option<String>,
) -> Result<(), DecodeError> {
    match r.branch(2)? {
        0 => *dst = None,
        _ => set_opt(dst, Some(Cow::Borrowed(r.str()?))),
    }
    Ok(())
}

/// An enum our reader schema declares with `table`'s symbols, in order.
pub(super) fn read_symbol<T: Copy>(r: &mut Reader<'_>, table: &[T]) -> Result<T, DecodeError> {
    let i = r.enum_index(table.len())?;
    table
        .get(i)
        .copied()
        .ok_or_else(|| DecodeError::Malformed(format!("internal: symbol {i}")))
}

/// Decodes a datum written with our own reader schema of `kind` straight into
/// `out` (replaced by an empty event of `kind` first if it is of another kind):
/// the reads the plan would execute, in the same order and with the same
/// checks and errors, without the interpretation and the slots (a quarter of
/// a mixed replay's instructions went to decoding through them).
pub(super) fn direct_into(
    kind: EventKind,
    r: &mut Reader<'_>,
    out: &mut Event,
) -> Result<(), DecodeError> {
    if out.kind() != kind {
        *out = Event::empty(kind);
    }
    match out {
        Event::PageView(e) => {
            set(&mut e.event_id, r.str()?);
            e.event_time = r.long()?;
            set(&mut e.visitor_id, r.str()?);
            read_opt_str(r, &mut e.customer_id)?;
            set(&mut e.site, r.str()?);
            set(&mut e.page, r.str()?);
            read_opt_str(r, &mut e.referrer)?;
            read_opt_str(r, &mut e.channel)?;
        }
        Event::Email(e) => {
            set(&mut e.event_id, r.str()?);
            e.event_time = r.long()?;
            set(&mut e.customer_id, r.str()?);
            set(&mut e.campaign_id, r.str()?);
            set(&mut e.message_id, r.str()?);
            e.kind = read_symbol(r, &EMAIL_TYPES)?;
            read_opt_str(r, &mut e.url)?;
        }
        Event::Purchase(e) => {
            set(&mut e.event_id, r.str()?);
            e.event_time = r.long()?;
            set(&mut e.customer_id, r.str()?);
            set(&mut e.order_id, r.str()?);
            e.kind = read_symbol(r, &PURCHASE_TYPES)?;
            e.amount_minor = r.long()?;
            set(&mut e.currency, r.str()?);
            e.cost_minor = match r.branch(2)? {
                0 => None,
                _ => Some(r.long()?),
            };
            e.items = r.int()?;
            read_opt_str(r, &mut e.campaign_id)?;
        }
        Event::Survey(e) => {
            set(&mut e.event_id, r.str()?);
            e.event_time = r.long()?;
            read_opt_str(r, &mut e.customer_id)?;
            set(&mut e.survey_id, r.str()?);
            e.kind = read_symbol(r, &SURVEY_KINDS)?;
            e.score = r.int()?;
            read_opt_str(r, &mut e.comment)?;
        }
    }
    Ok(())
}

/// Writes the slots into `out` (replaced by an empty event of `kind` first if
/// it is of another kind); slot numbers are positions in [`shape`].
pub(super) fn build_into(
    kind: EventKind,
    mut s: Slots<'_>,
    out: &mut Event,
) -> Result<(), DecodeError> {
    if out.kind() != kind {
        *out = Event::empty(kind);
    }
    match out {
        Event::PageView(e) => {
            set(&mut e.event_id, &s.string(0)?);
            e.event_time = s.long(1)?;
            set(&mut e.visitor_id, &s.string(2)?);
            set_opt(&mut e.customer_id, s.opt_string(3)?);
            set(&mut e.site, &s.string(4)?);
            set(&mut e.page, &s.string(5)?);
            set_opt(&mut e.referrer, s.opt_string(6)?);
            set_opt(&mut e.channel, s.opt_string(7)?);
        }
        Event::Email(e) => {
            set(&mut e.event_id, &s.string(0)?);
            e.event_time = s.long(1)?;
            set(&mut e.customer_id, &s.string(2)?);
            set(&mut e.campaign_id, &s.string(3)?);
            set(&mut e.message_id, &s.string(4)?);
            e.kind = s.symbol(5, &EMAIL_TYPES)?;
            set_opt(&mut e.url, s.opt_string(6)?);
        }
        Event::Purchase(e) => {
            set(&mut e.event_id, &s.string(0)?);
            e.event_time = s.long(1)?;
            set(&mut e.customer_id, &s.string(2)?);
            set(&mut e.order_id, &s.string(3)?);
            e.kind = s.symbol(4, &PURCHASE_TYPES)?;
            e.amount_minor = s.long(5)?;
            set(&mut e.currency, &s.string(6)?);
            e.cost_minor = s.opt_long(7)?;
            e.items = s.int(8)?;
            set_opt(&mut e.campaign_id, s.opt_string(9)?);
        }
        Event::Survey(e) => {
            set(&mut e.event_id, &s.string(0)?);
            e.event_time = s.long(1)?;
            set_opt(&mut e.customer_id, s.opt_string(2)?);
            set(&mut e.survey_id, &s.string(3)?);
            e.kind = s.symbol(4, &SURVEY_KINDS)?;
            e.score = s.int(5)?;
            set_opt(&mut e.comment, s.opt_string(6)?);
        }
    }
    Ok(())
}
