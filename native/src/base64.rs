//! Streaming base64 (RFC 4648 alphabet, padded) for MIME bodies (RFC 2045 §6.8): an encoder that
//! writes lines of `line_length` characters ending CRLF, and a decoder that skips CR, LF, space
//! and tab but rejects anything else outside the alphabet. The decoder must never guess: data
//! after padding and a truncated final quantum are errors that name the offset.
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::{Error, Result};

/// Input bytes encoded per pass into the scratch buffer before it is wrapped into lines (a
/// multiple of 3, small enough to stay in L1).
const ENCODE_STRIPE: usize = 57 * 72;

/// Encode whole 3-byte groups of `groups` into `out` (exactly `groups.len() / 3 * 4` bytes).
fn encode_groups(groups: &[u8], out: &mut [u8], simd: bool) {
    let (mut r, mut w) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true after `base64_x86::available()`.
        (r, w) = unsafe { crate::base64_x86::encode(groups, out) };
    }
    let _ = simd;
    // The output size is exact, so encode_slice cannot fail.
    let _ = STANDARD.encode_slice(&groups[r..], &mut out[w..]);
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::base64_x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Base64 encoder with line wrapping.
pub struct Encoder {
    line_length: usize,
    col: usize,
    carry: [u8; 3],
    carry_len: usize,
    scratch: Vec<u8>,
    simd: bool,
}

impl Encoder {
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
            simd: simd_available(),
        })
    }

    /// Use the scalar code only (tests compare both).
    pub fn disable_simd(&mut self) {
        self.simd = false;
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
            encode_groups(&self.carry, &mut q, false);
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
            encode_groups(stripe, &mut scratch[..n], self.simd);
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
        let mut chars = Vec::new();
        if self.carry_len > 0 {
            let c = self.carry;
            chars = STANDARD.encode(&c[..self.carry_len]).into_bytes();
            self.carry_len = 0;
        }
        let mut out = vec![0u8; chars.len() + 2 * (chars.len() / self.line_length + 1) + 2];
        let mut w = self.wrap_into(&chars, &mut out, 0);
        if self.col > 0 {
            out[w..w + 2].copy_from_slice(b"\r\n");
            w += 2;
            self.col = 0;
        }
        out.truncate(w);
        out
    }
}

const SKIP: u8 = 0xFE;
const BAD: u8 = 0xFF;
const PAD: u8 = 0xFD;

const fn decode_table() -> [u8; 256] {
    let mut t = [BAD; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t[b'\r' as usize] = SKIP;
    t[b'\n' as usize] = SKIP;
    t[b' ' as usize] = SKIP;
    t[b'\t' as usize] = SKIP;
    t[b'=' as usize] = PAD;
    t
}

static TABLE: [u8; 256] = decode_table();

/// Tolerant base64 decoder (whitespace skipped, everything else strict).
pub struct Decoder {
    quad: [u8; 4],
    qlen: usize,
    pad: usize,
    finished: bool,
    offset: u64,
    simd: bool,
    /// Characters of one stripe with CR and LF removed (bulk path).
    scratch: Vec<u8>,
}

/// Input bytes per bulk decoding stripe (before CR/LF removal).
const DECODE_STRIPE: usize = 8192;

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            quad: [0; 4],
            qlen: 0,
            pad: 0,
            finished: false,
            offset: 0,
            simd: simd_available(),
            scratch: Vec::new(),
        }
    }
}

fn describe(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("character '{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Use the scalar code only (tests compare both).
    pub fn disable_simd(&mut self) {
        self.simd = false;
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

    /// Decode `data` into `out`, which must hold [`Decoder::max_output_len`] bytes; returns
    /// the number of bytes written.
    pub fn update_into(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize> {
        let mut w = 0;
        let mut i = 0;
        // Bulk path: whole stripes that end with LF, CR/LF stripped, decoded by the SIMD kernel.
        // Any stripe it cannot take whole (other whitespace, padding, a bad character, a length
        // that is not a multiple of 4) goes through the scalar code below, which names offsets.
        #[cfg(target_arch = "x86_64")]
        if self.simd && self.qlen == 0 && !self.finished {
            let mut scratch = std::mem::take(&mut self.scratch);
            while data.len() - i >= DECODE_STRIPE / 2 {
                let window = &data[i..(i + DECODE_STRIPE).min(data.len())];
                let Some(last_lf) = memchr::memrchr(b'\n', window) else {
                    break;
                };
                let stripe = &window[..last_lf + 1];
                scratch.clear();
                let mut seg = 0;
                for at in memchr::memchr2_iter(b'\r', b'\n', stripe) {
                    scratch.extend_from_slice(&stripe[seg..at]);
                    seg = at + 1;
                }
                if !scratch.len().is_multiple_of(4) {
                    break;
                }
                let dst = &mut out[w..];
                // SAFETY: `simd` is only true after `base64_x86::available()`.
                let (mut r, mut ww) = unsafe { crate::base64_x86::decode(&scratch, dst) };
                let mut ok = true;
                while r < scratch.len() {
                    let q = &scratch[r..r + 4];
                    let (a, b, c, d) = (
                        TABLE[q[0] as usize],
                        TABLE[q[1] as usize],
                        TABLE[q[2] as usize],
                        TABLE[q[3] as usize],
                    );
                    if (a | b | c | d) >= 64 {
                        ok = false;
                        break;
                    }
                    let n = (u32::from(a) << 18)
                        | (u32::from(b) << 12)
                        | (u32::from(c) << 6)
                        | u32::from(d);
                    dst[ww..ww + 3].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    ww += 3;
                    r += 4;
                }
                if !ok {
                    break;
                }
                w += ww;
                i += stripe.len();
            }
            self.scratch = scratch;
        }
        // Try the SIMD kernel at the start and after each skipped character (a line start).
        let mut try_simd = self.simd;
        while i < data.len() {
            // Fast path: a whole quantum of alphabet characters at a quantum boundary.
            if self.qlen == 0 && !self.finished && i + 4 <= data.len() {
                #[cfg(target_arch = "x86_64")]
                if try_simd {
                    try_simd = false;
                    // SAFETY: `simd` is only true after `base64_x86::available()`.
                    let (r, ww) = unsafe { crate::base64_x86::decode(&data[i..], &mut out[w..]) };
                    i += r;
                    w += ww;
                    if i + 4 > data.len() {
                        continue;
                    }
                }
                let a = TABLE[data[i] as usize];
                let b = TABLE[data[i + 1] as usize];
                let c = TABLE[data[i + 2] as usize];
                let d = TABLE[data[i + 3] as usize];
                if (a | b | c | d) < 64 {
                    let n = (u32::from(a) << 18)
                        | (u32::from(b) << 12)
                        | (u32::from(c) << 6)
                        | u32::from(d);
                    out[w..w + 3].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    w += 3;
                    i += 4;
                    continue;
                }
            }
            let byte = data[i];
            let v = TABLE[byte as usize];
            let at = self.offset + i as u64;
            if v < 64 {
                if self.finished || self.pad > 0 {
                    return Err(Error::base64(
                        at,
                        format!("{} after padding", describe(byte)),
                    ));
                }
                self.quad[self.qlen] = v;
                self.qlen += 1;
                if self.qlen == 4 {
                    let q = self.quad;
                    let n = (u32::from(q[0]) << 18)
                        | (u32::from(q[1]) << 12)
                        | (u32::from(q[2]) << 6)
                        | u32::from(q[3]);
                    out[w..w + 3].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    w += 3;
                    self.qlen = 0;
                }
            } else if v == SKIP {
                try_simd = self.simd;
            } else if v == PAD {
                if self.finished {
                    return Err(Error::base64(at, "'=' after the final quantum"));
                }
                if self.qlen < 2 {
                    return Err(Error::base64(
                        at,
                        format!(
                            "'=' at position {} of a quantum (only 3 or 4 may be padding)",
                            self.qlen + 1
                        ),
                    ));
                }
                self.pad += 1;
                self.qlen += 1;
                if self.qlen == 4 {
                    let q = self.quad;
                    let n =
                        (u32::from(q[0]) << 18) | (u32::from(q[1]) << 12) | (u32::from(q[2]) << 6);
                    if self.pad == 1 {
                        out[w..w + 2].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
                        w += 2;
                    } else {
                        out[w] = (n >> 16) as u8;
                        w += 1;
                    }
                    self.qlen = 0;
                    self.finished = true;
                }
            } else {
                return Err(Error::base64(
                    at,
                    format!("{} outside the base64 alphabet", describe(byte)),
                ));
            }
            i += 1;
        }
        self.offset += data.len() as u64;
        Ok(w)
    }

    pub fn finalize(&mut self) -> Result<Vec<u8>> {
        if self.qlen != 0 {
            return Err(Error::base64(
                self.offset,
                format!(
                    "input ends inside a quantum ({} of 4 characters)",
                    self.qlen
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
        let mut e = Encoder::new(line).unwrap();
        let mut out = Vec::new();
        for c in data.chunks(step.max(1)) {
            out.extend(e.update(c));
        }
        out.extend(e.finalize());
        out
    }

    fn decode_all(text: &[u8], step: usize) -> Result<Vec<u8>> {
        let mut d = Decoder::new();
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
            assert_eq!(decode_all(expect.as_bytes(), 1).unwrap(), plain.as_bytes());
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
        let e = decode_all(b"Zm9v!", 2).unwrap_err();
        assert_eq!(
            e,
            Error::base64(4, "character '!' outside the base64 alphabet")
        );
        assert!(matches!(
            decode_all(b"Zg==Zg==", 3),
            Err(Error::Base64 { offset: 4, .. })
        ));
        assert!(matches!(
            decode_all(b"Zm9", 1),
            Err(Error::Base64 { offset: 3, .. })
        ));
        assert!(matches!(
            decode_all(b"Z===", 1),
            Err(Error::Base64 { offset: 1, .. })
        ));
        assert!(matches!(
            decode_all(b"Zg=a", 1),
            Err(Error::Base64 { offset: 3, .. })
        ));
        assert!(matches!(
            decode_all(b"Zg===", 1),
            Err(Error::Base64 { offset: 4, .. })
        ));
        assert!(Encoder::new(0).is_err());
    }

    /// The AVX2 kernels and the scalar code agree for every length and split, and errors found
    /// inside what would be a SIMD block still name the exact offset.
    #[test]
    fn simd_and_scalar_agree() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        for len in [
            0usize, 1, 2, 3, 31, 32, 33, 56, 57, 58, 100, 1000, 4104, 4105, 5000,
        ] {
            for line in [76usize, 64, 1, 5] {
                for step in [1usize, 7, 57, 4096, usize::MAX] {
                    if step < 8 && len > 1000 {
                        continue;
                    }
                    let run = |simd: bool| {
                        let mut e = Encoder::new(line).unwrap();
                        if !simd {
                            e.disable_simd();
                        }
                        let mut out = Vec::new();
                        for c in data[..len].chunks(step) {
                            out.extend(e.update(c));
                        }
                        out.extend(e.finalize());
                        out
                    };
                    let (fast, slow) = (run(true), run(false));
                    assert_eq!(fast, slow, "len {len} line {line} step {step}");
                    for simd in [true, false] {
                        let mut d = Decoder::new();
                        if !simd {
                            d.disable_simd();
                        }
                        let mut back = Vec::new();
                        for c in fast.chunks(step) {
                            back.extend(d.update(c).unwrap());
                        }
                        back.extend(d.finalize().unwrap());
                        assert_eq!(back, &data[..len]);
                    }
                }
            }
        }
        let mut text = encode_all(&data, 76, 5000);
        for (pos, bad) in [(40usize, b'!'), (77, b'-'), (200, 0x80), (33, b'=')] {
            let orig = text[pos];
            text[pos] = bad;
            let e = decode_all(&text, 100_000).unwrap_err();
            match e {
                Error::Base64 { offset, .. } => assert_eq!(offset, pos as u64, "{e:?}"),
                other => panic!("{other:?}"),
            }
            text[pos] = orig;
        }
    }

    /// `cargo test --release -- --ignored --nocapture bench_base64`
    #[test]
    #[ignore]
    fn bench_base64() {
        let data: Vec<u8> = (0..25 * 1024 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let enc = encode_all(&data, 76, 1 << 20);
        let mut out = vec![1u8; data.len() * 2];
        let (mut s1, mut s2) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut e = Encoder::new(76).unwrap();
            let mut w = 0;
            for c in data.chunks(1 << 20) {
                let n = e.output_len(c.len());
                w += e.update_into(c, &mut out[w..w + n]);
            }
            s1 = s1.min(t.elapsed().as_secs_f64());
            assert_eq!(&out[..w], &enc[..w]);
            let t = std::time::Instant::now();
            let mut d = Decoder::new();
            let mut w = 0;
            for c in enc.chunks(1 << 20) {
                w += d.update_into(c, &mut out[w..]).unwrap();
            }
            s2 = s2.min(t.elapsed().as_secs_f64());
            assert_eq!(&out[..w], &data[..]);
        }
        println!(
            "base64 encode {:.0} MB/s, decode {:.0} MB/s",
            25.0 / s1,
            25.0 / s2
        );
    }
}
