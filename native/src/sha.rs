//! Streaming SHA-256 (FIPS 180-4) over the `sha2` crate, which picks the SHA-NI backend at run
//! time. Chosen over `ring::digest` by measurement (see `bench_sha256` below). Pure Rust: no pyo3.
use sha2::{Digest, Sha256 as Inner};

/// A streaming SHA-256 state.
#[derive(Clone, Default)]
pub struct Sha256 {
    inner: Inner,
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256 {
            inner: Inner::new(),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }
    pub fn finalize(self) -> [u8; 32] {
        self.inner.finalize().into()
    }
}

/// One-shot SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Inner::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn fips_180_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut s = Sha256::new();
        for part in [
            &b"abcdbcdecdefdefgefghfghighijhi"[..],
            b"jkijkljklmklmnlmnomnopnopq",
        ] {
            s.update(part);
        }
        assert_eq!(
            hex(&s.finalize()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    /// `cargo test --release -- --ignored --nocapture bench_sha256` prints MB/s of sha2 vs ring.
    #[test]
    #[ignore]
    fn bench_sha256() {
        let data = vec![0x5au8; 25 * 1024 * 1024];
        let t = std::time::Instant::now();
        let a = sha256(&data);
        let s1 = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let b = ring::digest::digest(&ring::digest::SHA256, &data);
        let s2 = t.elapsed().as_secs_f64();
        assert_eq!(&a[..], b.as_ref());
        println!("sha2 {:.0} MB/s, ring {:.0} MB/s", 25.0 / s1, 25.0 / s2);
    }
}
