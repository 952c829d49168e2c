//! Streaming base64 (RFC 4648 alphabet, padded) for MIME bodies (RFC 2045 §6.8): an encoder that
//! writes lines of `line_length` characters ending CRLF, and a decoder that skips CR, LF, space
//! and tab but rejects anything else outside the alphabet. The encoding and decoding are done by
//! a maintained library (the [`Codec`] in [`Shipped`], chosen by measurement in
//! `bench/native.py`); this module only frames it: line breaks, quanta split across `update`
//! calls, and the MIME whitespace rule. It must never hold an encoding kernel of its own, and
//! the decoder must never guess: data after padding and a truncated final quantum are errors that
//! name the offset.
use crate::error::{Error, Result};

/// A base64 library, for whole groups: 3-byte groups to 4 characters and back.
pub trait Codec {
    /// Encode `inp` (a multiple of 3 bytes, or the last 1-2 bytes of a stream, which are
    /// padded) into `out`, exactly `(inp.len() + 2) / 3 * 4` bytes long.
    fn encode(inp: &[u8], out: &mut [u8]);
    /// Decode `quads`, a multiple of 4 characters without padding, into `out` (at least
    /// `quads.len() / 4 * 3` bytes); `None` if the library rejects a character.
    fn decode(quads: &[u8], out: &mut [u8]) -> Option<usize>;
    /// Decode the one padded final quantum ("xx==" or "xxx="), accepting non-zero trailing
    /// bits as Python's `base64` and every MIME reader does; `None` if rejected.
    fn decode_final(quad: &[u8; 4], out: &mut [u8; 3]) -> Option<usize>;
}

/// `base64-simd` (SSSE3/AVX2 kernels picked at run time): the shipped codec.
pub struct Simd;

impl Codec for Simd {
    fn encode(inp: &[u8], out: &mut [u8]) {
        let _ = base64_simd::STANDARD.encode(inp, base64_simd::Out::from_slice(out));
    }

    fn decode(quads: &[u8], out: &mut [u8]) -> Option<usize> {
        base64_simd::STANDARD
            .decode(quads, base64_simd::Out::from_slice(out))
            .ok()
            .map(|d| d.len())
    }

    fn decode_final(quad: &[u8; 4], out: &mut [u8; 3]) -> Option<usize> {
        // The forgiving (WHATWG) decoder is the one that accepts non-zero trailing bits; the
        // quantum holds no whitespace here, so it is otherwise the standard decoder.
        let mut buf = [0u8; 4];
        let d = base64_simd::forgiving_decode(quad, base64_simd::Out::from_slice(&mut buf)).ok()?;
        let n = d.len();
        out[..n].copy_from_slice(&buf[..n]);
        Some(n)
    }
}

/// The `base64` crate (portable scalar code): measured against [`Simd`] in `bench/native.py`.
#[cfg(feature = "bench-candidates")]
pub struct Scalar;

#[cfg(feature = "bench-candidates")]
const SCALAR: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

#[cfg(feature = "bench-candidates")]
impl Codec for Scalar {
    fn encode(inp: &[u8], out: &mut [u8]) {
        use base64::Engine;
        let _ = SCALAR.encode_slice(inp, out);
    }

    fn decode(quads: &[u8], out: &mut [u8]) -> Option<usize> {
        use base64::Engine;
        SCALAR.decode_slice(quads, out).ok()
    }

    fn decode_final(quad: &[u8; 4], out: &mut [u8; 3]) -> Option<usize> {
        use base64::Engine;
        SCALAR.decode_slice(quad, out).ok()
    }
}

/// The codec the extension ships.
pub type Shipped = Simd;

/// Input bytes encoded per pass into the scratch buffer before it is wrapped into lines (a
/// multiple of 3, small enough to stay in L1).
const ENCODE_STRIPE: usize = 57 * 72;

/// Base64 encoder with line wrapping.
pub struct Encoder<C: Codec = Shipped> {
    line_length: usize,
    col: usize,
    carry: [u8; 3],
    carry_len: usize,
    scratch: Vec<u8>,
    codec: std::marker::PhantomData<C>,
}

impl<C: Codec> Encoder<C> {
    pub fn new(line_length: usize) -> Result<Self> {
        if line_length == 0 {
            return Err(Error::usage("line_length: must be at least 1"));
        }
        Ok(Encoder {
            line_length,
            col: 0,
            carry: [0; 3],
            carry_len: 0,
            scratch: Vec::new(),
            codec: std::marker::PhantomData,
        })
    }

    /// Exactly how many bytes `update_into` writes for `n` more input bytes.
    pub fn output_len(&self, n: usize) -> usize {
        let chars = (self.carry_len + n) / 3 * 4;
        chars + 2 * ((self.col + chars) / self.line_length)
    }

    /// Copy `chars` into `out[w..]`, breaking lines with CRLF; returns the new write offset.
    fn wrap_into(&mut self, mut chars: &[u8], out: &mut [u8], mut w: usize) -> usize {
        let l = self.line_length;
        while !chars.is_empty() {
            let take = (l - self.col).min(chars.len());
            out[w..w + take].copy_from_slice(&chars[..take]);
            w += take;
            chars = &chars[take..];
            self.col += take;
            if self.col == l {
                out[w..w + 2].copy_from_slice(b"\r\n");
                w += 2;
                self.col = 0;
            }
        }
        w
    }

    /// Encode `data` into `out`, which must hold [`Encoder::output_len`] bytes; returns the
    /// number of bytes written.
    pub fn update_into(&mut self, mut data: &[u8], out: &mut [u8]) -> usize {
        let mut w = 0;
        if self.carry_len > 0 {
            let take = (3 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 3 {
                return 0;
            }
            let mut q = [0u8; 4];
            C::encode(&self.carry, &mut q);
            self.carry_len = 0;
            w = self.wrap_into(&q, out, w);
        }
        let whole = data.len() / 3 * 3;
        let mut scratch = std::mem::take(&mut self.scratch);
        let want = (whole.min(ENCODE_STRIPE) / 3) * 4;
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        for stripe in data[..whole].chunks(ENCODE_STRIPE) {
            let n = stripe.len() / 3 * 4;
            C::encode(stripe, &mut scratch[..n]);
            w = self.wrap_into(&scratch[..n], out, w);
        }
        self.scratch = scratch;
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        w
    }

    pub fn update(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len(data.len())];
        let n = self.update_into(data, &mut out);
        debug_assert_eq!(n, out.len());
        out
    }

    pub fn finalize(&mut self) -> Vec<u8> {
        let mut q = [0u8; 4];
        let chars: &[u8] = if self.carry_len > 0 {
            let c = self.carry;
            C::encode(&c[..self.carry_len], &mut q);
            self.carry_len = 0;
            &q
        } else {
            &[]
        };
        let mut out = vec![0u8; chars.len() + 2 * (chars.len() / self.line_length + 1) + 2];
        let mut w = self.wrap_into(chars, &mut out, 0);
        if self.col > 0 {
            out[w..w + 2].copy_from_slice(b"\r\n");
            w += 2;
            self.col = 0;
        }
        out.truncate(w);
        out
    }
}

/// What the MIME framing makes of one input byte.
#[derive(PartialEq)]
enum Class {
    Alphabet,
    /// CR, LF, space, tab: skipped.
    Skip,
    Pad,
    Other,
}

fn class(b: u8) -> Class {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => Class::Alphabet,
        b'\r' | b'\n' | b' ' | b'\t' => Class::Skip,
        b'=' => Class::Pad,
        _ => Class::Other,
    }
}

fn describe(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("character '{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

/// Tolerant base64 decoder (whitespace skipped, everything else strict).
pub struct Decoder<C: Codec = Shipped> {
    /// Characters of a quantum not yet complete (may include '=').
    carry: [u8; 4],
    carry_len: usize,
    /// How many of `carry` are '='.
    pad: usize,
    /// A padded quantum has ended the data: only whitespace may follow.
    finished: bool,
    /// Input bytes seen before this `update` (error offsets count from the first byte).
    offset: u64,
    /// The carry and this update's characters with the whitespace removed.
    scratch: Vec<u8>,
    /// What `begin` found in `scratch`, for `finish`.
    staged: Staged,
    codec: std::marker::PhantomData<C>,
}

impl<C: Codec> Default for Decoder<C> {
    fn default() -> Self {
        Decoder {
            carry: [0; 4],
            carry_len: 0,
            pad: 0,
            finished: false,
            offset: 0,
            scratch: Vec::new(),
            staged: Staged::Nothing,
            codec: std::marker::PhantomData,
        }
    }
}

/// Scratch capacity a decoder keeps between updates (its callers feed 1 MiB reads); a larger
/// one, left by a caller that fed more at once, is freed.
const SCRATCH_KEEP: usize = 2 * 1024 * 1024;

/// What [`Decoder::begin`] found for [`Decoder::finish`].
#[derive(Clone, Copy)]
enum Staged {
    Nothing,
    /// No padding: whole quanta to the library, the rest carried.
    Bulk,
    /// Padding seen and the rules passed: the state after the update as `Decoder::check`
    /// says.
    Padded {
        qlen: usize,
        pad: usize,
        finished: bool,
    },
}

impl<C: Codec> Decoder<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An upper bound of what `update_into` writes for `n` input bytes.
    pub fn max_output_len(n: usize) -> usize {
        n / 4 * 3 + 3
    }

    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; Self::max_output_len(data.len())];
        let n = self.update_into(data, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Walk `data` with the MIME rules from the current quantum state, decoding nothing: the
    /// first violation as an error naming its offset, else the state after `data` as
    /// (characters in the open quantum, '=' among them, finished).
    fn check(&self, data: &[u8]) -> Result<(usize, usize, bool)> {
        let (mut qlen, mut pad, mut finished) = (self.carry_len, self.pad, self.finished);
        for (i, &byte) in data.iter().enumerate() {
            let at = self.offset + i as u64;
            match class(byte) {
                Class::Skip => {}
                Class::Alphabet => {
                    if finished || pad > 0 {
                        return Err(Error::base64(
                            at,
                            format!("{} after padding", describe(byte)),
                        ));
                    }
                    qlen = (qlen + 1) % 4;
                }
                Class::Pad => {
                    if finished {
                        return Err(Error::base64(at, "'=' after the final quantum"));
                    }
                    if qlen < 2 {
                        return Err(Error::base64(
                            at,
                            format!(
                                "'=' at position {} of a quantum (only 3 or 4 may be padding)",
                                qlen + 1
                            ),
                        ));
                    }
                    pad += 1;
                    qlen += 1;
                    if qlen == 4 {
                        (qlen, pad, finished) = (0, 0, true);
                    }
                }
                Class::Other => {
                    return Err(Error::base64(
                        at,
                        format!("{} outside the base64 alphabet", describe(byte)),
                    ));
                }
            }
        }
        Ok((qlen, pad, finished))
    }

    /// The error in `data` that made the library refuse it (found by [`Decoder::check`]).
    fn locate(&self, data: &[u8]) -> Error {
        match self.check(data) {
            Err(e) => e,
            // Unreachable unless the library rejects what RFC 4648 allows; still an error.
            Ok(_) => Error::base64(self.offset, "rejected by the base64 library"),
        }
    }

    /// Decode `data` into `out`, which must hold [`Decoder::max_output_len`] bytes; returns
    /// the number of bytes written.
    pub fn update_into(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize> {
        let n = self.begin(data)?;
        self.finish(data, &mut out[..n])
    }

    /// First half of an update: take `data` in (its characters, line ends and other
    /// whitespace removed, are held until [`Decoder::finish`]) and return exactly how many bytes
    /// `finish` will write, so that the caller can allocate the output once at its final size.
    /// Errors that the MIME rules find (padding in the wrong place, data after it) are raised
    /// here, characters the library rejects in `finish`.
    pub fn begin(&mut self, data: &[u8]) -> Result<usize> {
        // The characters: the open quantum's, then `data` without its line ends (the lines
        // between LFs, found with memchr, each less a CR before its LF), then, only if a CR,
        // space or tab is left (rare: never in what an encoder writes), without those too.
        // Measured faster than counting the characters first and stripping stripes in `finish`
        // (the extra counting passes cost more than the cache misses they avoid).
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(&self.carry[..self.carry_len]);
        let mut seg = 0;
        for at in memchr::memchr_iter(b'\n', data) {
            let line = &data[seg..at];
            s.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            seg = at + 1;
        }
        s.extend_from_slice(&data[seg..]);
        if memchr::memchr3(b'\r', b' ', b'\t', &s[self.carry_len..]).is_some() {
            s.retain(|&b| !matches!(b, b'\r' | b' ' | b'\t'));
        }
        self.staged = if !self.finished && memchr::memchr(b'=', &self.scratch).is_none() {
            // The bulk of every message: no padding yet, whole quanta go to the library as
            // they are, which also checks them.
            Staged::Bulk
        } else {
            // Padding in sight (once per stream) or data after it: the rules first.
            let (qlen, pad, finished) = self.check(data)?;
            Staged::Padded {
                qlen,
                pad,
                finished,
            }
        };
        let whole = self.scratch.len() / 4 * 4;
        Ok(match self.staged {
            Staged::Padded { finished: true, .. } if self.finished => 0,
            Staged::Padded { finished: true, .. } => {
                // The padded quantum ends the characters: 3 bytes less its '=' characters.
                let pads = self.scratch[whole - 4..whole]
                    .iter()
                    .filter(|&&b| b == b'=')
                    .count();
                whole / 4 * 3 - pads
            }
            _ => whole / 4 * 3,
        })
    }

    /// Second half of an update: decode what [`Decoder::begin`] took in (the same `data`, for
    /// error offsets) into `out`, exactly as long as `begin` said; returns the number of bytes
    /// written.
    pub fn finish(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize> {
        let staged = std::mem::replace(&mut self.staged, Staged::Nothing);
        let mut chars = std::mem::take(&mut self.scratch);
        let res = self.decode_staged(staged, data, &chars, out);
        if chars.capacity() > SCRATCH_KEEP {
            // A caller that fed one huge buffer does not leave a copy of its size behind.
            chars = Vec::new();
        }
        self.scratch = chars;
        let w = res?;
        self.offset += data.len() as u64;
        Ok(w)
    }

    fn decode_staged(
        &mut self,
        staged: Staged,
        data: &[u8],
        chars: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        let whole = chars.len() / 4 * 4;
        let (qlen, pad, finished) = match staged {
            Staged::Nothing => {
                return Err(Error::usage("Base64Decoder: finish without begin"));
            }
            Staged::Bulk => (chars.len() - whole, 0, false),
            Staged::Padded {
                qlen,
                pad,
                finished,
            } => (qlen, pad, finished),
        };
        let w = self.decode_quanta(data, &chars[..whole], out)?;
        let rest = &chars[whole..];
        debug_assert_eq!(rest.len(), qlen);
        if matches!(staged, Staged::Bulk) && rest.iter().any(|&b| class(b) != Class::Alphabet) {
            return Err(self.locate(data));
        }
        self.carry[..qlen].copy_from_slice(rest);
        self.carry_len = qlen;
        self.pad = pad;
        self.finished = finished;
        Ok(w)
    }

    /// Decode whole quanta; the last may be the padded final one (the rules have let '='
    /// through only there).
    fn decode_quanta(&self, data: &[u8], quads: &[u8], out: &mut [u8]) -> Result<usize> {
        let Some(last) = quads.len().checked_sub(4) else {
            return Ok(0);
        };
        let (body, end) = if quads[last..].contains(&b'=') {
            (last, Some(&quads[last..]))
        } else {
            (quads.len(), None)
        };
        let mut w = C::decode(&quads[..body], out).ok_or_else(|| self.locate(data))?;
        if let Some(end) = end {
            let quad: &[u8; 4] = end.try_into().map_err(|_| self.locate(data))?;
            let mut bytes = [0u8; 3];
            let n = C::decode_final(quad, &mut bytes).ok_or_else(|| self.locate(data))?;
            out[w..w + n].copy_from_slice(&bytes[..n]);
            w += n;
        }
        Ok(w)
    }

    pub fn finalize(&mut self) -> Result<Vec<u8>> {
        if self.carry_len != 0 {
            return Err(Error::base64(
                self.offset,
                format!(
                    "input ends inside a quantum ({} of 4 characters)",
                    self.carry_len
                ),
            ));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(data: &[u8], line: usize, step: usize) -> Vec<u8> {
        let mut e = Encoder::<Shipped>::new(line).unwrap();
        let mut out = Vec::new();
        for c in data.chunks(step.max(1)) {
            out.extend(e.update(c));
        }
        out.extend(e.finalize());
        out
    }

    fn decode_all(text: &[u8], step: usize) -> Result<Vec<u8>> {
        let mut d = Decoder::<Shipped>::new();
        let mut out = Vec::new();
        for c in text.chunks(step.max(1)) {
            out.extend(d.update(c)?);
        }
        out.extend(d.finalize()?);
        Ok(out)
    }

    #[test]
    fn rfc4648_vectors_and_wrapping() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            let expect = if enc.is_empty() {
                String::new()
            } else {
                format!("{enc}\r\n")
            };
            assert_eq!(encode_all(plain.as_bytes(), 76, 1), expect.as_bytes());
            for step in [1, 2, 3, 5, 100] {
                assert_eq!(
                    decode_all(expect.as_bytes(), step).unwrap(),
                    plain.as_bytes()
                );
            }
        }
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for step in [1, 2, 3, 56, 57, 58, 1000] {
            let out = encode_all(&data, 76, step);
            let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
            assert!(lines[..lines.len() - 1]
                .iter()
                .all(|l| l.len() <= 77 && l.ends_with(b"\r")));
            assert_eq!(lines[0].len(), 77);
            assert!(out.ends_with(b"\r\n"));
            assert_eq!(decode_all(&out, step).unwrap(), data);
        }
        assert_eq!(encode_all(b"foobar", 4, 1), b"Zm9v\r\nYmFy\r\n");
        assert_eq!(encode_all(b"foobar", 3, 5), b"Zm9\r\nvYm\r\nFy\r\n");
    }

    #[test]
    fn decoder_errors_name_offset() {
        assert_eq!(decode_all(b"Zm9v\r\n Zg==\t", 1).unwrap(), b"foof");
        assert_eq!(decode_all(b"Zm9v\r\n Zg==\t\r\n", 100).unwrap(), b"foof");
        for step in [1, 2, 3, 100] {
            let e = decode_all(b"Zm9v!", step).unwrap_err();
            assert_eq!(
                e,
                Error::base64(4, "character '!' outside the base64 alphabet")
            );
            for (text, offset) in [
                (&b"Zg==Zg=="[..], 4u64),
                (b"Zm9", 3),
                (b"Z===", 1),
                (b"Zg=a", 3),
                (b"Zg===", 4),
                (b"Zm9vZ\x80", 5),
                (b"Zm9v=", 4),
            ] {
                assert!(
                    matches!(decode_all(text, step), Err(Error::Base64 { offset: o, .. }) if o == offset),
                    "{text:?} step {step}: {:?}",
                    decode_all(text, step)
                );
            }
        }
        assert!(Encoder::<Shipped>::new(0).is_err());
    }

    /// Python's base64 (and every MIME reader) accepts non-zero trailing bits in the padded
    /// final quantum; so does this decoder.
    #[test]
    fn trailing_bits_are_accepted() {
        assert_eq!(decode_all(b"Zh==", 1).unwrap(), b"f");
        assert_eq!(decode_all(b"Zm9=\r\n", 100).unwrap(), b"fo");
    }

    /// Errors deep inside a long stream, where the library does the decoding, still name the
    /// exact offset.
    #[test]
    fn deep_errors_name_offset() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        let mut text = encode_all(&data, 76, 5000);
        for (pos, bad, at) in [
            (40usize, b'!', 40u64),
            (77, b'-', 77),
            (200, 0x80, 200),
            (33, b'=', 33),
            // '=' as the third character of a quantum is padding: the next character errs.
            (78 + 2, b'=', 78 + 3),
        ] {
            let orig = text[pos];
            text[pos] = bad;
            for step in [7, 4096, 100_000] {
                match decode_all(&text, step).unwrap_err() {
                    Error::Base64 { offset, .. } => assert_eq!(offset, at, "pos {pos}"),
                    other => panic!("{other:?}"),
                }
            }
            text[pos] = orig;
        }
    }

    /// Both codecs give the same text and data for every length, line length and split.
    #[cfg(feature = "bench-candidates")]
    #[test]
    fn codecs_agree() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        for len in [0usize, 1, 2, 3, 31, 57, 58, 1000, 5000] {
            for line in [76usize, 64, 1, 5] {
                for step in [1usize, 7, 57, 4096, usize::MAX] {
                    if step < 8 && len > 1000 {
                        continue;
                    }
                    fn run<C: Codec>(data: &[u8], line: usize, step: usize) -> Vec<u8> {
                        let mut e = Encoder::<C>::new(line).unwrap();
                        let mut out = Vec::new();
                        for c in data.chunks(step) {
                            out.extend(e.update(c));
                        }
                        out.extend(e.finalize());
                        let mut d = Decoder::<C>::new();
                        let mut back = Vec::new();
                        for c in out.chunks(step) {
                            back.extend(d.update(c).unwrap());
                        }
                        back.extend(d.finalize().unwrap());
                        assert_eq!(back, data);
                        out
                    }
                    assert_eq!(
                        run::<Simd>(&data[..len], line, step),
                        run::<Scalar>(&data[..len], line, step)
                    );
                }
            }
        }
    }
}
