//! BER (X.690) for streaming CMS: a header writer, a chunker that wraps a byte stream into the
//! primitive segments of a constructed OCTET STRING, and a push parser that never holds more than
//! what was fed. The parser must never panic or loop on any input: every malformed or truncated
//! encoding becomes an `Error::Ber` naming the offset.
use crate::error::{Error, Result};

pub const CLASS_UNIVERSAL: u8 = 0;
pub const CLASS_APPLICATION: u8 = 1;
pub const CLASS_CONTEXT: u8 = 2;
pub const CLASS_PRIVATE: u8 = 3;
const TAG_OCTET_STRING: u8 = 0x04;

pub const EVENT_START: u8 = 1;
pub const EVENT_END: u8 = 2;
pub const EVENT_VALUE: u8 = 3;
pub const EVENT_RAW: u8 = 4;
pub const EVENT_DATA: u8 = 5;

/// Identifier and length octets (X.690 §8.1.2, §8.1.3). `length=None` writes the indefinite
/// form 0x80, which X.690 §8.1.3.2 allows only for constructed encodings.
pub fn header(
    tag_class: u8,
    constructed: bool,
    tag_number: u64,
    length: Option<u64>,
) -> Result<Vec<u8>> {
    if tag_class > 3 {
        return Err(Error::usage(format!(
            "tag_class: must be 0..3, got {tag_class}"
        )));
    }
    if length.is_none() && !constructed {
        return Err(Error::usage(
            "length: the indefinite form needs a constructed element",
        ));
    }
    let mut out = Vec::with_capacity(12);
    let first = (tag_class << 6) | if constructed { 0x20 } else { 0 };
    if tag_number < 31 {
        out.push(first | tag_number as u8);
    } else {
        out.push(first | 0x1f);
        let mut groups = Vec::with_capacity(10);
        let mut n = tag_number;
        loop {
            groups.push((n & 0x7f) as u8);
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(if i > 0 { g | 0x80 } else { *g });
        }
    }
    write_length(&mut out, length);
    Ok(out)
}

fn write_length(out: &mut Vec<u8>, length: Option<u64>) {
    match length {
        None => out.push(0x80),
        Some(n) if n < 0x80 => out.push(n as u8),
        Some(n) => {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (8 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
}

/// Wraps a byte stream into primitive OCTET STRING TLVs of exactly `chunk_size` content bytes.
pub struct OctetStringChunker {
    chunk_size: usize,
    pending: Vec<u8>,
    /// The identifier and length octets of a full segment.
    header: Vec<u8>,
}

impl OctetStringChunker {
    pub fn new(chunk_size: usize) -> Result<Self> {
        if chunk_size == 0 {
            return Err(Error::usage("chunk_size: must be at least 1"));
        }
        let mut header = vec![TAG_OCTET_STRING];
        write_length(&mut header, Some(chunk_size as u64));
        Ok(OctetStringChunker {
            chunk_size,
            pending: Vec::new(),
            header,
        })
    }

    fn segment(out: &mut Vec<u8>, content: &[u8]) {
        out.push(TAG_OCTET_STRING);
        write_length(out, Some(content.len() as u64));
        out.extend_from_slice(content);
    }

    /// Exactly how many bytes `update_into` writes for `n` more input bytes.
    pub fn output_len(&self, n: usize) -> usize {
        (self.pending.len() + n) / self.chunk_size * (self.chunk_size + self.header.len())
    }

    /// Write the full segments that `data` completes into `out` (which must hold
    /// [`OctetStringChunker::output_len`] bytes); returns the number of bytes written.
    pub fn update_into(&mut self, mut data: &[u8], out: &mut [u8]) -> usize {
        let cs = self.chunk_size;
        let h = self.header.len();
        let mut w = 0;
        if !self.pending.is_empty() {
            let take = (cs - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < cs {
                return 0;
            }
            out[..h].copy_from_slice(&self.header);
            out[h..h + cs].copy_from_slice(&self.pending);
            w = h + cs;
            self.pending.clear();
        }
        let mut pieces = data.chunks_exact(cs);
        for p in &mut pieces {
            out[w..w + h].copy_from_slice(&self.header);
            out[w + h..w + h + cs].copy_from_slice(p);
            w += h + cs;
        }
        self.pending.extend_from_slice(pieces.remainder());
        w
    }

    pub fn update(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len(data.len())];
        let n = self.update_into(data, &mut out);
        debug_assert_eq!(n, out.len());
        out
    }

    pub fn finalize(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            Self::segment(&mut out, &self.pending);
            self.pending.clear();
        }
        out
    }
}

// --- push parser -------------------------------------------------------------------------------

/// Drop consumed input once this much of it has piled up at the front of the buffer.
const COMPACT_AT: usize = 64 * 1024;
/// X.690 allows any number of length octets; more than 8 cannot describe a size we can hold.
const MAX_LENGTH_OCTETS: usize = 8;
/// Subsequent tag octets: 9 of 7 bits fit a u64.
const MAX_TAG_OCTETS: usize = 9;

/// One parser event (see the Python stub for the meaning of each kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    pub tag_class: u8,
    pub constructed: bool,
    pub tag_number: u64,
    pub length: Option<u64>,
    /// START/RAW: first header byte; VALUE/DATA: first data byte; END: just past the element.
    pub offset: u64,
    pub depth: usize,
    pub value: Vec<u8>,
}

/// A decoded header, with its raw octets (at most 1 + 9 tag + 1 + 8 length = 19 bytes).
#[derive(Debug, Clone, Copy)]
struct Hdr {
    class: u8,
    constructed: bool,
    tag: u64,
    length: Option<u64>,
    /// Stream offset of the first identifier octet.
    offset: u64,
    /// Stream offset of the first content octet.
    content: u64,
    depth: usize,
    raw: [u8; 20],
    raw_len: u8,
}

impl Hdr {
    fn event(&self, kind: u8, offset: u64, value: Vec<u8>) -> Event {
        Event {
            kind,
            tag_class: self.class,
            constructed: self.constructed,
            tag_number: self.tag,
            length: self.length,
            offset,
            depth: self.depth,
            value,
        }
    }
}

/// What `parse_header` found.
enum Item {
    Eoc,
    Hdr(Hdr),
}

/// An open constructed element.
#[derive(Debug, Clone, Copy)]
struct Frame {
    hdr: Hdr,
    /// Stream offset just past the content (definite form only).
    end: Option<u64>,
    /// The nearest definite end among this frame and its ancestors: nothing inside may pass it.
    limit: Option<u64>,
}

/// Progress of the scan of an element being captured whole.
#[derive(Debug, Clone)]
struct Scan {
    cursor: u64,
    /// (end, limit) of open indefinite-length elements inside the captured one.
    stack: Vec<(Option<u64>, Option<u64>)>,
}

#[derive(Debug, Clone)]
enum State {
    /// Expecting a header, an EOC, or the end of the innermost open element.
    Header,
    /// START was returned; capture()/flatten() may still choose what comes next.
    Started(Hdr),
    Value(Hdr),
    Capture(Hdr, Scan),
    /// `base`: number of open frames while the root is open; `seg_left`: content bytes left in the
    /// current primitive segment; `primitive_root`: the flattened element itself is primitive.
    Flatten {
        hdr: Hdr,
        base: usize,
        seg_left: u64,
        primitive_root: bool,
    },
    EmitEnd(Hdr),
    Done,
    Failed(Error),
}

/// Push parser for one BER element (X.690 §8.1), fed in arbitrary pieces.
pub struct Reader {
    max_depth: usize,
    max_capture: u64,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Stream offset of the next unconsumed byte.
    pos: u64,
    eof: bool,
    frames: Vec<Frame>,
    state: State,
    started: bool,
}

fn parse_header(w: &[u8], at: u64, depth: usize) -> Result<Option<Item>> {
    let Some(&b0) = w.first() else {
        return Ok(None);
    };
    let class = b0 >> 6;
    let constructed = b0 & 0x20 != 0;
    let mut tag = u64::from(b0 & 0x1f);
    let mut i = 1;
    if tag == 31 {
        tag = 0;
        loop {
            let Some(&b) = w.get(i) else { return Ok(None) };
            if i == 1 && b == 0x80 {
                return Err(Error::ber(
                    at,
                    "tag number has a leading 0x80 octet (X.690 §8.1.2.4.2)",
                ));
            }
            if i > MAX_TAG_OCTETS {
                return Err(Error::ber(at, "tag number longer than 9 octets"));
            }
            tag = (tag << 7) | u64::from(b & 0x7f);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if tag < 31 {
            return Err(Error::ber(
                at,
                format!("tag number {tag} must use the short form"),
            ));
        }
    }
    let Some(&l0) = w.get(i) else { return Ok(None) };
    i += 1;
    let length = match l0 {
        0..=0x7f => Some(u64::from(l0)),
        0x80 => None,
        0xff => {
            return Err(Error::ber(
                at,
                "length octet 0xff is reserved (X.690 §8.1.3.5)",
            ))
        }
        _ => {
            let n = usize::from(l0 & 0x7f);
            if n > MAX_LENGTH_OCTETS {
                return Err(Error::ber(
                    at,
                    format!("{n} length octets (at most 8 supported)"),
                ));
            }
            let Some(octets) = w.get(i..i + n) else {
                return Ok(None);
            };
            i += n;
            Some(octets.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
        }
    };
    if b0 == 0 {
        return if length == Some(0) {
            Ok(Some(Item::Eoc))
        } else {
            Err(Error::ber(
                at,
                "identifier 0x00 is reserved for end-of-contents, which has length 0",
            ))
        };
    }
    if class == CLASS_UNIVERSAL && tag == 0 {
        return Err(Error::ber(
            at,
            "universal tag 0 is reserved for end-of-contents",
        ));
    }
    if length.is_none() && !constructed {
        return Err(Error::ber(
            at,
            "indefinite length on a primitive element (X.690 §8.1.3.2)",
        ));
    }
    let mut raw = [0u8; 20];
    raw[..i].copy_from_slice(&w[..i]);
    Ok(Some(Item::Hdr(Hdr {
        class,
        constructed,
        tag,
        length,
        offset: at,
        content: at + i as u64,
        depth,
        raw,
        raw_len: i as u8,
    })))
}

impl Reader {
    pub fn new(max_depth: usize, max_capture: u64) -> Self {
        Reader {
            max_depth,
            max_capture,
            buf: Vec::new(),
            buf_start: 0,
            pos: 0,
            eof: false,
            frames: Vec::new(),
            state: State::Header,
            started: false,
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.eof && !data.is_empty() {
            return Err(Error::usage("feed: called after feed_eof"));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The unread input after the outermost element (or everything unread so far).
    pub fn remaining(&self) -> &[u8] {
        &self.buf[self.index(self.pos)..]
    }

    fn index(&self, at: u64) -> usize {
        (at - self.buf_start) as usize
    }

    fn buf_end(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    fn avail(&self) -> u64 {
        self.buf_end() - self.pos
    }

    fn limit(&self) -> Option<u64> {
        self.frames.last().and_then(|f| f.limit)
    }

    fn compact(&mut self) {
        let used = self.index(self.pos);
        if used >= COMPACT_AT && used * 2 >= self.buf.len() {
            self.buf.drain(..used);
            self.buf_start = self.pos;
        }
    }

    /// Parse a header at `at`, which must not pass `limit`. Ok(None): more input is needed.
    fn header_at(&self, at: u64, limit: Option<u64>, depth: usize) -> Result<Option<Item>> {
        if at > self.buf_end() {
            return Ok(None);
        }
        let data = &self.buf[self.index(at)..];
        let (window, capped) = match limit {
            Some(l) if l.saturating_sub(at) <= data.len() as u64 => {
                (&data[..l.saturating_sub(at) as usize], true)
            }
            _ => (data, false),
        };
        let past = || {
            Error::ber(
                at,
                format!(
                    "element runs past the end of its enclosing element at offset {}",
                    limit.unwrap_or(0)
                ),
            )
        };
        match parse_header(window, at, depth)? {
            None if capped => Err(past()),
            None => Ok(None),
            Some(Item::Eoc) => Ok(Some(Item::Eoc)),
            Some(Item::Hdr(h)) => {
                if depth >= self.max_depth {
                    return Err(Error::ber(
                        at,
                        format!("nesting deeper than max_depth={}", self.max_depth),
                    ));
                }
                if let Some(len) = h.length {
                    let end = h
                        .content
                        .checked_add(len)
                        .ok_or_else(|| Error::ber(at, "length too large"))?;
                    if limit.is_some_and(|l| end > l) {
                        return Err(Error::ber(
                            at,
                            format!(
                                "length {len} runs past the end of its enclosing element at offset {}",
                                limit.unwrap_or(0)
                            ),
                        ));
                    }
                }
                Ok(Some(Item::Hdr(h)))
            }
        }
    }

    fn truncated(&self, what: &str) -> Error {
        Error::ber(self.pos, format!("input ends {what}"))
    }

    /// Choose "capture" for the element whose START was just returned.
    pub fn capture(&mut self) -> Result<()> {
        let State::Started(h) = self.state else {
            return Err(Error::usage(
                "capture: must be called right after a START event",
            ));
        };
        let limit = self.limit();
        let scan = match h.length {
            Some(len) => Scan {
                cursor: h.content + len,
                stack: Vec::new(),
            },
            None => Scan {
                cursor: h.content,
                stack: vec![(None, limit)],
            },
        };
        self.state = State::Capture(h, scan);
        Ok(())
    }

    /// Choose "flatten" for the element whose START was just returned.
    pub fn flatten(&mut self) -> Result<()> {
        let State::Started(h) = self.state else {
            return Err(Error::usage(
                "flatten: must be called right after a START event",
            ));
        };
        self.state = if h.constructed {
            self.push(h);
            State::Flatten {
                hdr: h,
                base: self.frames.len(),
                seg_left: 0,
                primitive_root: false,
            }
        } else {
            State::Flatten {
                hdr: h,
                base: self.frames.len(),
                seg_left: h.length.unwrap_or(0),
                primitive_root: true,
            }
        };
        Ok(())
    }

    fn push(&mut self, h: Hdr) {
        let end = h.length.map(|l| h.content + l);
        let limit = end.or(self.limit());
        self.frames.push(Frame { hdr: h, end, limit });
    }

    fn after_element(&self) -> State {
        if self.frames.is_empty() {
            State::Done
        } else {
            State::Header
        }
    }

    pub fn next_event(&mut self) -> Result<Option<Event>> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let r = self.step();
        match &r {
            Err(e) => self.state = State::Failed(e.clone()),
            Ok(_) => self.compact(),
        }
        r
    }

    fn step(&mut self) -> Result<Option<Event>> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(None),
                State::Failed(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
                State::EmitEnd(h) => {
                    self.state = self.after_element();
                    return Ok(Some(h.event(EVENT_END, self.pos, Vec::new())));
                }
                State::Header => {
                    if let Some(f) = self.frames.last().copied() {
                        if f.end == Some(self.pos) {
                            self.frames.pop();
                            self.state = State::EmitEnd(f.hdr);
                            continue;
                        }
                    }
                    let depth = self.frames.len();
                    match self.header_at(self.pos, self.limit(), depth)? {
                        None => {
                            self.state = State::Header;
                            if self.eof {
                                return Err(if self.frames.is_empty() && self.avail() == 0 && !self.started {
                                    self.truncated("before any BER element")
                                } else if let Some(f) = self.frames.last() {
                                    self.truncated(&format!("inside the element that starts at offset {}", f.hdr.offset))
                                } else {
                                    self.truncated("inside an element header")
                                });
                            }
                            return Ok(None);
                        }
                        Some(Item::Eoc) => match self.frames.last().copied() {
                            Some(f) if f.end.is_none() => {
                                self.pos += 2;
                                self.frames.pop();
                                self.state = State::EmitEnd(f.hdr);
                            }
                            Some(f) => {
                                return Err(Error::ber(
                                    self.pos,
                                    format!("end-of-contents inside the definite-length element at offset {}", f.hdr.offset),
                                ))
                            }
                            None => {
                                return Err(Error::ber(self.pos, "end-of-contents outside any element"))
                            }
                        },
                        Some(Item::Hdr(h)) => {
                            self.started = true;
                            self.pos = h.content;
                            self.state = State::Started(h);
                            return Ok(Some(h.event(EVENT_START, h.offset, Vec::new())));
                        }
                    }
                }
                State::Started(h) => {
                    if h.constructed {
                        self.push(h);
                        self.state = State::Header;
                    } else {
                        let len = h.length.unwrap_or(0);
                        if len > self.max_capture {
                            return Err(Error::ber(
                                h.offset,
                                format!(
                                    "primitive value of {len} bytes exceeds max_capture={}",
                                    self.max_capture
                                ),
                            ));
                        }
                        self.state = State::Value(h);
                    }
                }
                State::Value(h) => {
                    let len = h.length.unwrap_or(0);
                    if self.avail() < len {
                        self.state = State::Value(h);
                        if self.eof {
                            return Err(self.truncated(&format!(
                                "inside the value of the element at offset {}",
                                h.offset
                            )));
                        }
                        return Ok(None);
                    }
                    let i = self.index(self.pos);
                    let value = self.buf[i..i + len as usize].to_vec();
                    self.pos += len;
                    self.state = State::EmitEnd(h);
                    return Ok(Some(h.event(EVENT_VALUE, h.content, value)));
                }
                State::Capture(h, scan) => return self.step_capture(h, scan),
                State::Flatten {
                    hdr,
                    base,
                    seg_left,
                    primitive_root,
                } => return self.step_flatten(hdr, base, seg_left, primitive_root),
            }
        }
    }

    fn step_capture(&mut self, h: Hdr, mut scan: Scan) -> Result<Option<Event>> {
        let too_big = |n: u64| {
            Error::ber(
                h.offset,
                format!(
                    "captured element exceeds max_capture={} bytes (at least {n})",
                    self.max_capture
                ),
            )
        };
        loop {
            if scan.cursor - h.offset > self.max_capture {
                return Err(too_big(scan.cursor - h.offset));
            }
            let Some(&(end, limit)) = scan.stack.last() else {
                break;
            };
            if end == Some(scan.cursor) {
                scan.stack.pop();
                continue;
            }
            let depth = h.depth + scan.stack.len();
            match self.header_at(scan.cursor, limit, depth)? {
                None => {
                    if self.eof {
                        return Err(Error::ber(
                            scan.cursor.min(self.buf_end()),
                            format!(
                                "input ends inside the captured element at offset {}",
                                h.offset
                            ),
                        ));
                    }
                    self.state = State::Capture(h, scan);
                    return Ok(None);
                }
                Some(Item::Eoc) => {
                    if end.is_some() {
                        return Err(Error::ber(
                            scan.cursor,
                            "end-of-contents inside a definite-length element",
                        ));
                    }
                    scan.stack.pop();
                    scan.cursor += 2;
                }
                Some(Item::Hdr(c)) => match c.length {
                    Some(len) => scan.cursor = c.content + len,
                    None => {
                        scan.stack.push((None, limit));
                        scan.cursor = c.content;
                    }
                },
            }
        }
        if self.buf_end() < scan.cursor {
            if self.eof {
                return Err(self.truncated(&format!(
                    "inside the captured element at offset {}",
                    h.offset
                )));
            }
            self.state = State::Capture(h, scan);
            return Ok(None);
        }
        let mut raw = Vec::with_capacity((scan.cursor - h.offset) as usize);
        raw.extend_from_slice(&h.raw[..usize::from(h.raw_len)]);
        let (a, b) = (self.index(self.pos), self.index(scan.cursor));
        raw.extend_from_slice(&self.buf[a..b]);
        self.pos = scan.cursor;
        self.state = self.after_element();
        Ok(Some(h.event(EVENT_RAW, h.offset, raw)))
    }

    fn step_flatten(
        &mut self,
        h: Hdr,
        base: usize,
        mut seg_left: u64,
        primitive_root: bool,
    ) -> Result<Option<Event>> {
        let mut out = Vec::new();
        let mut data_at = None;
        let finished = loop {
            if seg_left > 0 {
                let n = seg_left.min(self.avail());
                if n == 0 {
                    break false;
                }
                data_at.get_or_insert(self.pos);
                let i = self.index(self.pos);
                out.extend_from_slice(&self.buf[i..i + n as usize]);
                self.pos += n;
                seg_left -= n;
                continue;
            }
            if primitive_root {
                break true;
            }
            let Some(f) = self.frames.last().copied() else {
                break true;
            };
            if f.end == Some(self.pos) {
                self.frames.pop();
                if self.frames.len() < base {
                    break true;
                }
                continue;
            }
            match self.header_at(self.pos, f.limit, self.frames.len())? {
                None => break false,
                Some(Item::Eoc) => {
                    if f.end.is_some() {
                        return Err(Error::ber(
                            self.pos,
                            format!(
                                "end-of-contents inside the definite-length element at offset {}",
                                f.hdr.offset
                            ),
                        ));
                    }
                    self.pos += 2;
                    self.frames.pop();
                    if self.frames.len() < base {
                        break true;
                    }
                }
                Some(Item::Hdr(c)) => {
                    self.pos = c.content;
                    if c.constructed {
                        self.push(c);
                    } else {
                        seg_left = c.length.unwrap_or(0);
                    }
                }
            }
        };
        if finished {
            self.state = State::EmitEnd(h);
        } else {
            self.state = State::Flatten {
                hdr: h,
                base,
                seg_left,
                primitive_root,
            };
        }
        if let Some(at) = data_at {
            return Ok(Some(h.event(EVENT_DATA, at, out)));
        }
        if finished {
            return self.step();
        }
        if self.eof {
            return Err(self.truncated(&format!(
                "inside the flattened element at offset {}",
                h.offset
            )));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(header(0, true, 16, Some(3)).unwrap(), [0x30, 0x03]);
        assert_eq!(header(0, true, 4, None).unwrap(), [0x24, 0x80]);
        assert_eq!(header(2, true, 0, Some(128)).unwrap(), [0xa0, 0x81, 0x80]);
        assert_eq!(
            header(0, false, 4, Some(65536)).unwrap(),
            [0x04, 0x83, 1, 0, 0]
        );
        assert_eq!(header(1, false, 31, Some(0)).unwrap(), [0x5f, 0x1f, 0x00]);
        assert_eq!(
            header(3, false, 201, Some(1)).unwrap(),
            [0xdf, 0x81, 0x49, 0x01]
        );
        assert!(header(4, false, 1, Some(0)).is_err());
        assert!(header(0, false, 4, None).is_err());
    }

    #[test]
    fn chunker_segments() {
        let mut c = OctetStringChunker::new(4).unwrap();
        let mut out = c.update(b"abc");
        assert!(out.is_empty());
        out.extend(c.update(b"defghij"));
        assert_eq!(out, b"\x04\x04abcd\x04\x04efgh");
        assert_eq!(c.finalize(), b"\x04\x02ij");
        assert_eq!(c.finalize(), b"");
        assert!(OctetStringChunker::new(0).is_err());
    }

    /// Drive a reader over `input` fed `step` bytes at a time; `choose(event_index)` picks
    /// 0 = default, 1 = capture, 2 = flatten after each START. Returns the events or the error.
    fn drive(input: &[u8], step: usize, choose: &mut dyn FnMut(usize) -> u8) -> Result<Vec<Event>> {
        let mut r = Reader::new(32, 1 << 20);
        let mut events = Vec::new();
        let mut pump = |r: &mut Reader, events: &mut Vec<Event>| -> Result<()> {
            let mut guard = 0;
            while let Some(e) = r.next_event()? {
                guard += 1;
                assert!(guard < 1_000_000, "parser loops");
                if e.kind == EVENT_START {
                    match choose(events.len()) {
                        1 => r.capture()?,
                        2 => r.flatten()?,
                        _ => {}
                    }
                }
                events.push(e);
            }
            Ok(())
        };
        for c in input.chunks(step.max(1)) {
            r.feed(c)?;
            pump(&mut r, &mut events)?;
        }
        r.feed_eof();
        pump(&mut r, &mut events)?;
        assert!(
            r.done(),
            "no error after eof, so the element must be complete"
        );
        Ok(events)
    }

    fn kinds(ev: &[Event]) -> Vec<u8> {
        ev.iter().map(|e| e.kind).collect()
    }

    const SEQ_DER: &[u8] = b"\x30\x08\x04\x03abc\x02\x01\x05";
    // SEQUENCE (indefinite) { [0] constructed OCTET STRING (indefinite) { "ab", { "c" } , "" } }
    const NESTED_BER: &[u8] =
        b"\x30\x80\xa0\x80\x04\x02ab\x24\x80\x04\x01c\x00\x00\x04\x00\x00\x00\x00\x00";

    #[test]
    fn der_sequence_every_split() {
        for step in 1..=SEQ_DER.len() {
            let ev = drive(SEQ_DER, step, &mut |_| 0).unwrap();
            assert_eq!(
                kinds(&ev),
                [
                    EVENT_START,
                    EVENT_START,
                    EVENT_VALUE,
                    EVENT_END,
                    EVENT_START,
                    EVENT_VALUE,
                    EVENT_END,
                    EVENT_END
                ]
            );
            assert_eq!(ev[2].value, b"abc");
            assert_eq!(ev[2].offset, 4);
            assert_eq!(ev[4].offset, 7);
            assert_eq!(ev[5].value, b"\x05");
            assert_eq!(ev[7].offset, 10);
            assert_eq!(ev[4].depth, 1);
        }
    }

    #[test]
    fn flatten_nested_constructed_string() {
        for step in 1..=NESTED_BER.len() {
            let ev = drive(NESTED_BER, step, &mut |i| if i == 1 { 2 } else { 0 }).unwrap();
            let data: Vec<u8> = ev
                .iter()
                .filter(|e| e.kind == EVENT_DATA)
                .flat_map(|e| e.value.clone())
                .collect();
            assert_eq!(data, b"abc");
            assert_eq!(ev.last().unwrap().kind, EVENT_END);
            assert_eq!(ev.last().unwrap().offset, NESTED_BER.len() as u64);
            if step == NESTED_BER.len() {
                // One feed: the data coalesces into one event.
                assert_eq!(
                    kinds(&ev),
                    [EVENT_START, EVENT_START, EVENT_DATA, EVENT_END, EVENT_END]
                );
            }
        }
    }

    #[test]
    fn capture_returns_whole_encoding() {
        for step in 1..=NESTED_BER.len() {
            let ev = drive(NESTED_BER, step, &mut |i| if i == 1 { 1 } else { 0 }).unwrap();
            assert_eq!(kinds(&ev), [EVENT_START, EVENT_START, EVENT_RAW, EVENT_END]);
            assert_eq!(ev[2].value, &NESTED_BER[2..NESTED_BER.len() - 2]);
            let ev = drive(SEQ_DER, step, &mut |i| if i == 0 { 1 } else { 0 }).unwrap();
            assert_eq!(kinds(&ev), [EVENT_START, EVENT_RAW]);
            assert_eq!(ev[1].value, SEQ_DER);
        }
    }

    #[test]
    fn high_tags_and_long_lengths() {
        let mut enc = header(2, false, 1000, Some(200)).unwrap();
        enc.extend(vec![7u8; 200]);
        let ev = drive(&enc, 3, &mut |_| 0).unwrap();
        assert_eq!(
            (ev[0].tag_class, ev[0].tag_number, ev[0].length),
            (2, 1000, Some(200))
        );
        assert_eq!(ev[1].value.len(), 200);
        // Non-minimal long-form length is allowed in BER.
        let ev = drive(b"\x04\x82\x00\x01x", 1, &mut |_| 0).unwrap();
        assert_eq!(ev[1].value, b"x");
    }

    fn err_offset(input: &[u8]) -> (u64, String) {
        match drive(input, 1, &mut |_| 0) {
            Err(Error::Ber { offset, reason }) => (offset, reason),
            other => panic!("expected a BER error for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_inputs() {
        assert_eq!(err_offset(b"\x30\x03\x04\x05abcde").0, 2); // child runs past parent
        assert_eq!(err_offset(b"\x30\x04\x00\x00\x05\x00").0, 2); // EOC in definite
        assert_eq!(err_offset(b"\x04\x80\x00\x00").0, 0); // indefinite primitive
        assert_eq!(
            err_offset(b"\x04\x89\x00\x00\x00\x00\x00\x00\x00\x00\x01").0,
            0
        ); // 9 octets
        assert_eq!(err_offset(b"\x04\xff").0, 0);
        assert!(err_offset(b"\x30\x05\x04\x01a").1.contains("input ends"));
        assert!(err_offset(b"\x30\x80\x04\x01a").1.contains("input ends"));
        assert!(err_offset(b"").1.contains("before any"));
        assert_eq!(err_offset(b"\x00\x00").0, 0);
        assert_eq!(err_offset(b"\x1f\x80\x01\x00").0, 0);
        // An indefinite element inside a definite one must end before it.
        assert_eq!(err_offset(b"\x30\x04\x30\x80\x05\x00").0, 6);
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(b"\x30\x80");
        }
        assert!(err_offset(&deep).1.contains("max_depth"));
    }

    #[test]
    fn trailing_bytes_are_left_unread() {
        let mut r = Reader::new(32, 1024);
        r.feed(b"\x05\x00tail").unwrap();
        assert_eq!(r.next_event().unwrap().unwrap().kind, EVENT_START);
        assert_eq!(r.next_event().unwrap().unwrap().kind, EVENT_VALUE);
        assert_eq!(r.next_event().unwrap().unwrap().kind, EVENT_END);
        assert_eq!(r.next_event().unwrap(), None);
        assert!(r.done());
        assert_eq!(r.offset(), 2);
        assert_eq!(r.remaining(), b"tail");
    }

    #[test]
    fn limits_raise() {
        let mut r = Reader::new(32, 2);
        r.feed(b"\x04\x03abc").unwrap();
        r.next_event().unwrap();
        assert!(matches!(r.next_event(), Err(Error::Ber { .. })));
        let mut r = Reader::new(32, 4);
        r.feed(b"\x30\x03\x05\x01").unwrap();
        r.next_event().unwrap();
        r.capture().unwrap();
        assert!(matches!(r.next_event(), Err(Error::Ber { .. })));
        assert!(matches!(r.capture(), Err(Error::Usage(_))));
    }

    /// xorshift: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_random_or_truncated_input() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let seeds: [&[u8]; 3] = [
            SEQ_DER,
            NESTED_BER,
            b"\x30\x80\x24\x80\x04\x01a\x00\x00\xbf\x88\x01\x80\x00\x00\x00\x00",
        ];
        for round in 0..20_000 {
            let mut input: Vec<u8> = match round % 3 {
                0 => (0..rng.next() % 40).map(|_| rng.next() as u8).collect(),
                _ => seeds[(rng.next() % 3) as usize].to_vec(),
            };
            // Mutate, truncate, or both.
            for _ in 0..rng.next() % 4 {
                if !input.is_empty() {
                    let i = (rng.next() as usize) % input.len();
                    input[i] = rng.next() as u8;
                }
            }
            if !input.is_empty() && rng.next().is_multiple_of(2) {
                input.truncate((rng.next() as usize) % input.len());
            }
            let step = 1 + (rng.next() % 5) as usize;
            let mut picks = Rng(rng.next() | 1);
            let _ = drive(&input, step, &mut |_| (picks.next() % 3) as u8);
        }
    }
}
