//! SMTP DATA (RFC 5321 §4.5.2) and POP3 multi-line (RFC 1939 §3) dot-stuffing. The unstuffer
//! ends the body only on CRLF "." CRLF: a bare LF or bare CR never starts a line, so "\n.\r\n",
//! "\n.\n" and "\r.\r\n" are content, never a terminator (no SMTP smuggling). It must never
//! alter line ends; it counts bare CR and bare LF so that the server can refuse such mail.
use memchr::{memchr2, memchr_iter};

/// Dot-stuffs a message body and appends the terminator.
#[derive(Default)]
pub struct Stuffer {
    /// The next byte starts a line (start of body, or just after CRLF).
    at_line_start: bool,
    prev_cr: bool,
}

impl Stuffer {
    pub fn new() -> Self {
        Stuffer {
            at_line_start: true,
            prev_cr: false,
        }
    }

    pub fn update(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 1);
        if data.is_empty() {
            return out;
        }
        if self.at_line_start && data[0] == b'.' {
            out.push(b'.');
        }
        let mut start = 0;
        for i in memchr_iter(b'\n', data) {
            let crlf = if i == 0 {
                self.prev_cr
            } else {
                data[i - 1] == b'\r'
            };
            if crlf && data.get(i + 1) == Some(&b'.') {
                out.extend_from_slice(&data[start..=i]);
                out.push(b'.');
                start = i + 1;
            }
        }
        out.extend_from_slice(&data[start..]);
        let n = data.len();
        let last = data[n - 1];
        self.at_line_start = last == b'\n'
            && if n >= 2 {
                data[n - 2] == b'\r'
            } else {
                self.prev_cr
            };
        self.prev_cr = last == b'\r';
        out
    }

    /// Complete the last line with CRLF if needed, then write "." CRLF.
    pub fn finalize(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5);
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.at_line_start = true;
        self.prev_cr = false;
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum S {
    /// After CRLF (or at the start of the body).
    LineStart,
    /// A '.' at line start, withheld.
    Dot,
    /// '.' CR at line start, both withheld.
    DotCr,
    /// Inside a line.
    Mid,
    /// After a CR inside a line (written out; bare unless LF follows).
    Cr,
}

/// Reads a dot-stuffed body up to CRLF "." CRLF.
pub struct Unstuffer {
    s: S,
    done: bool,
    rest: Vec<u8>,
    bare_lf: u64,
    bare_cr: u64,
    line: u64,
    longest: u64,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Unstuffer {
    pub fn new() -> Self {
        Unstuffer {
            s: S::LineStart,
            done: false,
            rest: Vec::new(),
            bare_lf: 0,
            bare_cr: 0,
            line: 0,
            longest: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.done
    }
    pub fn bare_lf(&self) -> u64 {
        self.bare_lf
    }
    pub fn bare_cr(&self) -> u64 {
        self.bare_cr
    }
    pub fn longest_line(&self) -> u64 {
        self.longest.max(self.line)
    }
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest)
    }

    fn end_line(&mut self) {
        self.longest = self.longest.max(self.line);
        self.line = 0;
    }

    /// A byte inside a line (no pending CR).
    fn mid(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        if b == b'\r' {
            self.s = S::Cr;
        } else {
            if b == b'\n' {
                self.bare_lf += 1;
            }
            self.line += 1;
            self.s = S::Mid;
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        if self.done {
            self.rest.extend_from_slice(data);
            return Vec::new();
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if self.s == S::Mid {
                match memchr2(b'\r', b'\n', &data[i..]) {
                    None => {
                        out.extend_from_slice(&data[i..]);
                        self.line += (data.len() - i) as u64;
                        break;
                    }
                    Some(k) => {
                        out.extend_from_slice(&data[i..i + k]);
                        self.line += k as u64;
                        let b = data[i + k];
                        i += k + 1;
                        self.mid(b, &mut out);
                        continue;
                    }
                }
            }
            let b = data[i];
            i += 1;
            match self.s {
                S::LineStart => {
                    if b == b'.' {
                        self.line += 1;
                        self.s = S::Dot;
                    } else {
                        self.mid(b, &mut out);
                    }
                }
                // The withheld dot is dropped: it was a stuffed dot (RFC 5321 §4.5.2).
                S::Dot => {
                    if b == b'\r' {
                        self.s = S::DotCr;
                    } else {
                        self.mid(b, &mut out);
                    }
                }
                S::DotCr => {
                    if b == b'\n' {
                        self.end_line();
                        self.done = true;
                        self.rest.extend_from_slice(&data[i..]);
                        break;
                    }
                    // ".\r" + something: the CR was bare.
                    self.bare_cr += 1;
                    self.line += 1;
                    out.push(b'\r');
                    self.mid(b, &mut out);
                }
                S::Cr => {
                    if b == b'\n' {
                        out.push(b'\n');
                        self.end_line();
                        self.s = S::LineStart;
                    } else {
                        self.bare_cr += 1;
                        self.line += 1;
                        self.mid(b, &mut out);
                    }
                }
                S::Mid => self.mid(b, &mut out),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(body: &[u8], step: usize) -> Vec<u8> {
        let mut s = Stuffer::new();
        let mut out = Vec::new();
        for c in body.chunks(step.max(1)) {
            out.extend(s.update(c));
        }
        out.extend(s.finalize());
        out
    }

    fn unstuff(wire: &[u8], step: usize) -> (Vec<u8>, Unstuffer) {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        for c in wire.chunks(step.max(1)) {
            out.extend(u.feed(c));
        }
        (out, u)
    }

    #[test]
    fn stuffing() {
        assert_eq!(stuff(b"", 1), b".\r\n");
        assert_eq!(stuff(b".a\r\n.\r\nb", 1), b"..a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff(b"a\n.b\r\n", 2), b"a\n.b\r\n.\r\n");
        assert_eq!(stuff(b"x\r", 1), b"x\r\r\n.\r\n");
    }

    #[test]
    fn terminator_split_at_every_position() {
        let wire = b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";
        for step in 1..=wire.len() {
            let (out, mut u) = unstuff(wire, step);
            assert!(u.done());
            assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\nbody\r\n");
            assert_eq!(u.take_rest(), b"QUIT\r\n");
            assert_eq!(u.take_rest(), b"");
        }
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_body() {
        for evil in [
            &b"a\n.\r\nMAIL FROM:<x>\r\n"[..],
            b"a\n.\nMAIL",
            b"a\r.\r\nMAIL",
            b"a\r\n.\nMAIL",
            b"a\r\n.\rMAIL",
        ] {
            for step in 1..=evil.len() {
                let (out, u) = unstuff(evil, step);
                assert!(!u.done(), "{evil:?} ended the body");
                assert!(out.ends_with(b"MAIL") || out.ends_with(b"MAIL FROM:<x>\r\n"));
                assert!(u.bare_lf() + u.bare_cr() >= 1);
            }
        }
    }

    #[test]
    fn round_trip_and_counters() {
        let body = b"..\r\n.\r\n\r\n.x\ny\rz\r\n";
        for step in 1..8 {
            let wire = stuff(body, step);
            let (out, u) = unstuff(&wire, step);
            assert!(u.done());
            assert_eq!(out, body);
            assert_eq!((u.bare_lf(), u.bare_cr()), (1, 1));
            assert_eq!(u.longest_line(), 7); // the wire line "..x\ny\rz", without its CRLF
        }
        let (_, u) = unstuff(b"abc\r\nabcdefgh", 3);
        assert_eq!(u.longest_line(), 8);
    }

    /// `cargo test --release -- --ignored --nocapture bench_dot`
    #[test]
    #[ignore]
    fn bench_dot() {
        let line =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/abcdefghijkl\r\n";
        let body: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(25 * 1024 * 1024)
            .collect();
        let t = std::time::Instant::now();
        let wire = stuff(&body, 65536);
        let s1 = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let (out, _) = unstuff(&wire, 65536);
        let s2 = t.elapsed().as_secs_f64();
        assert_eq!(&out[..body.len()], &body[..]);
        println!(
            "dot stuff {:.0} MB/s, unstuff {:.0} MB/s",
            25.0 / s1,
            25.0 / s2
        );
    }
}
