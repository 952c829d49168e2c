//! Streaming base64 (RFC 4648 alphabet, padded) for MIME bodies (RFC 2045 §6.8): an encoder that
//! writes lines of `line_length` characters ending CRLF, and a decoder that skips CR, LF, space
//! and tab but rejects anything else outside the alphabet. The decoder must never guess: data
//! after padding and a truncated final quantum are errors that name the offset.
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::{Error, Result};

/// Base64 encoder with line wrapping.
pub struct Encoder {
    line_length: usize,
    col: usize,
    carry: [u8; 3],
    carry_len: usize,
    scratch: Vec<u8>,
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
        })
    }

    fn wrap(&mut self, out: &mut Vec<u8>) {
        let mut chars = &self.scratch[..];
        while !chars.is_empty() {
            let take = (self.line_length - self.col).min(chars.len());
            out.extend_from_slice(&chars[..take]);
            chars = &chars[take..];
            self.col += take;
            if self.col == self.line_length {
                out.extend_from_slice(b"\r\n");
                self.col = 0;
            }
        }
    }

    fn encode_into_scratch(&mut self, groups: &[u8]) {
        let n = groups.len() / 3 * 4;
        let start = self.scratch.len();
        self.scratch.resize(start + n, 0);
        // The output size is exact, so encode_slice cannot fail.
        let _ = STANDARD.encode_slice(groups, &mut self.scratch[start..]);
    }

    pub fn update(&mut self, mut data: &[u8]) -> Vec<u8> {
        self.scratch.clear();
        if self.carry_len > 0 {
            let take = (3 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 3 {
                return Vec::new();
            }
            let c = self.carry;
            self.encode_into_scratch(&c);
            self.carry_len = 0;
        }
        let whole = data.len() / 3 * 3;
        self.encode_into_scratch(&data[..whole]);
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        let chars = self.scratch.len();
        let mut out = Vec::with_capacity(chars + chars / self.line_length * 2 + 2);
        self.wrap(&mut out);
        out
    }

    pub fn finalize(&mut self) -> Vec<u8> {
        self.scratch.clear();
        if self.carry_len > 0 {
            let c = self.carry;
            self.scratch = STANDARD.encode(&c[..self.carry_len]).into_bytes();
            self.carry_len = 0;
        }
        let mut out = Vec::with_capacity(self.scratch.len() + 4);
        self.wrap(&mut out);
        if self.col > 0 {
            out.extend_from_slice(b"\r\n");
            self.col = 0;
        }
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
#[derive(Default)]
pub struct Decoder {
    quad: [u8; 4],
    qlen: usize,
    pad: usize,
    finished: bool,
    offset: u64,
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

    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() / 4 * 3 + 3);
        let mut i = 0;
        while i < data.len() {
            // Fast path: a whole quantum of alphabet characters at a quantum boundary.
            if self.qlen == 0 && !self.finished && i + 4 <= data.len() {
                let a = TABLE[data[i] as usize];
                let b = TABLE[data[i + 1] as usize];
                let c = TABLE[data[i + 2] as usize];
                let d = TABLE[data[i + 3] as usize];
                if (a | b | c | d) < 64 {
                    let n = (u32::from(a) << 18)
                        | (u32::from(b) << 12)
                        | (u32::from(c) << 6)
                        | u32::from(d);
                    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
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
                    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    self.qlen = 0;
                }
            } else if v == SKIP {
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
                        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
                    } else {
                        out.push((n >> 16) as u8);
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
        Ok(out)
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

    /// `cargo test --release -- --ignored --nocapture bench_base64`
    #[test]
    #[ignore]
    fn bench_base64() {
        let data: Vec<u8> = (0..25 * 1024 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let t = std::time::Instant::now();
        let enc = encode_all(&data, 76, 65536);
        let s1 = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let dec = decode_all(&enc, 65536).unwrap();
        let s2 = t.elapsed().as_secs_f64();
        assert_eq!(dec, data);
        println!(
            "base64 encode {:.0} MB/s, decode {:.0} MB/s",
            25.0 / s1,
            25.0 / s2
        );
    }
}
