//! Streaming AES-256-GCM per NIST SP 800-38D. On x86-64 with AES-NI and PCLMULQDQ it runs the
//! kernel in `gcm_x86.rs` (picked at run time); elsewhere the RustCrypto `aes` block cipher,
//! `ctr` (32-bit big-endian counter) and `ghash`. The one-shot AEAD crates
//! cannot stream a 25 MB message; this can, in constant memory. Only 96-bit nonces (what
//! KOM-LE/KIM use, digest §2.6) and 128-bit tags. It must never release a tag for more plaintext
//! than SP 800-38D allows (2^39 - 256 bits), and never compare tags in variable time.
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use aes::Aes256;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// SP 800-38D §5.2.1.1: len(P) <= 2^39 - 256 bits.
pub const MAX_PLAINTEXT: u64 = (1 << 36) - 32;

type Ctr = ctr::Ctr32BE<Aes256>;

/// Bytes processed per CTR pass before they are hashed, so that the data is still in L1 when
/// GHASH reads it (encrypt: CTR then GHASH; decrypt: GHASH then CTR).
const STRIPE: usize = 4096;

/// The keystream and GHASH engine: the x86-64 AES-NI/PCLMULQDQ kernel when the CPU has it,
/// else the portable RustCrypto crates.
enum Engine {
    #[cfg(target_arch = "x86_64")]
    Fast {
        k: Box<crate::gcm_x86::Kernel>,
        /// Keystream of the current partial block; `ks_used == 16` means none is left.
        ks: [u8; 16],
        ks_used: usize,
    },
    Soft {
        ctr: Box<Ctr>,
        ghash: Box<GHash>,
    },
}

/// The GCM state shared by encryption and decryption.
pub struct Gcm {
    engine: Engine,
    /// Ciphertext bytes not yet hashed because they do not fill a 16-byte GHASH block.
    partial: [u8; 16],
    partial_len: usize,
    aad_len: u64,
    ct_len: u64,
    /// E(K, J0), XORed onto GHASH to form the tag.
    tag_mask: [u8; 16],
}

impl Gcm {
    pub fn new(key: &[u8], nonce: &[u8], aad: &[u8]) -> Result<Self> {
        Self::with_engine(key, nonce, aad, true)
    }

    /// `fast = false` forces the portable engine (tests compare both).
    pub fn with_engine(key: &[u8], nonce: &[u8], aad: &[u8], fast: bool) -> Result<Self> {
        if key.len() != KEY_LEN {
            return Err(Error::usage(format!(
                "key: AES-256-GCM needs a 32-byte key, got {} bytes",
                key.len()
            )));
        }
        if nonce.len() != NONCE_LEN {
            return Err(Error::usage(format!(
                "nonce: AES-256-GCM here needs a 12-byte nonce, got {} bytes",
                nonce.len()
            )));
        }
        #[cfg(target_arch = "x86_64")]
        if fast && crate::gcm_x86::Kernel::available() {
            let key: &[u8; 32] = key
                .try_into()
                .map_err(|_| Error::usage("key: bad length"))?;
            let nonce: &[u8; 12] = nonce
                .try_into()
                .map_err(|_| Error::usage("nonce: bad length"))?;
            let (k, mask) = crate::gcm_x86::Kernel::new(key, nonce);
            let mut g = Gcm {
                engine: Engine::Fast {
                    k: Box::new(k),
                    ks: [0; 16],
                    ks_used: 16,
                },
                partial: [0; 16],
                partial_len: 0,
                aad_len: aad.len() as u64,
                ct_len: 0,
                tag_mask: mask,
            };
            g.hash_padded(aad);
            return Ok(g);
        }
        let _ = fast;
        let cipher = Aes256::new_from_slice(key).map_err(|_| Error::usage("key: bad length"))?;
        // H = E(K, 0^128)
        let mut h = ghash::Key::default();
        cipher.encrypt_block(&mut h);
        let mut ghash = GHash::new(&h);
        ghash.update_padded(aad);
        // J0 = IV || 0^31 || 1 for a 96-bit IV.
        let mut j0 = aes::Block::default();
        j0[..12].copy_from_slice(nonce);
        j0[15] = 1;
        let mut mask = j0;
        cipher.encrypt_block(&mut mask);
        // The payload's counter starts at inc32(J0).
        let mut icb = j0;
        icb[15] = 2;
        let ctr = Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher, &icb));
        Ok(Gcm {
            engine: Engine::Soft {
                ctr: Box::new(ctr),
                ghash: Box::new(ghash),
            },
            partial: [0; 16],
            partial_len: 0,
            aad_len: aad.len() as u64,
            ct_len: 0,
            tag_mask: mask.into(),
        })
    }

    /// Whether the x86-64 kernel is in use.
    pub fn is_fast(&self) -> bool {
        !matches!(self.engine, Engine::Soft { .. })
    }

    /// Turn off the 256-bit VAES lanes (tests cover the 128-bit AES-NI path with this).
    pub fn disable_vaes(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Engine::Fast { k, .. } = &mut self.engine {
            k.disable_vaes();
        }
    }

    fn account(&mut self, n: usize) -> Result<()> {
        let total = self.ct_len.saturating_add(n as u64);
        if total > MAX_PLAINTEXT {
            return Err(Error::usage(
                "data: AES-GCM message longer than 2^36 - 32 bytes (SP 800-38D limit)",
            ));
        }
        self.ct_len = total;
        Ok(())
    }

    /// GHASH `data`, zero-padded to a whole block (AAD, the final partial block, lengths).
    fn hash_padded(&mut self, data: &[u8]) {
        match &mut self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::Fast { k, .. } => {
                let whole = data.len() & !15;
                // SAFETY: `whole` bytes of `data` are readable.
                unsafe { k.ghash(data.as_ptr(), whole) };
                if whole < data.len() {
                    let mut last = [0u8; 16];
                    last[..data.len() - whole].copy_from_slice(&data[whole..]);
                    // SAFETY: 16 readable bytes.
                    unsafe { k.ghash(last.as_ptr(), 16) };
                }
            }
            Engine::Soft { ghash, .. } => ghash.update_padded(data),
        }
    }

    fn hash_ciphertext(&mut self, mut ct: &[u8]) {
        if self.partial_len > 0 {
            let take = (16 - self.partial_len).min(ct.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&ct[..take]);
            self.partial_len += take;
            ct = &ct[take..];
            if self.partial_len < 16 {
                return;
            }
            let block = self.partial;
            self.hash_padded(&block);
            self.partial_len = 0;
        }
        let whole = ct.len() & !15;
        self.hash_padded(&ct[..whole]);
        let tail = &ct[whole..];
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
    }

    /// out = inp XOR keystream, hashing the ciphertext (`encrypt`: the output; else the input).
    ///
    /// # Safety
    /// `inp` readable and `out` writable for `len` bytes; the two are the same or disjoint.
    unsafe fn crypt(&mut self, inp: *const u8, out: *mut u8, len: usize, encrypt: bool) {
        match &mut self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::Fast { .. } => self.crypt_fast(inp, out, len, encrypt),
            Engine::Soft { .. } => {
                if !encrypt {
                    self.hash_ciphertext(std::slice::from_raw_parts(inp, len));
                }
                if let Engine::Soft { ctr, .. } = &mut self.engine {
                    std::ptr::copy(inp, out, len);
                    ctr.apply_keystream(std::slice::from_raw_parts_mut(out, len));
                }
                if encrypt {
                    self.hash_ciphertext(std::slice::from_raw_parts(out, len));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn crypt_fast(&mut self, inp: *const u8, out: *mut u8, len: usize, encrypt: bool) {
        let mut i = 0;
        // Use up the keystream of a partial block left by the previous call.
        if let Engine::Fast { ks, ks_used, .. } = &mut self.engine {
            while *ks_used < 16 && i < len {
                let c = *inp.add(i);
                let p = c ^ ks[*ks_used];
                *out.add(i) = p;
                let ct = if encrypt { p } else { c };
                self.partial[self.partial_len] = ct;
                self.partial_len += 1;
                *ks_used += 1;
                i += 1;
            }
        }
        if self.partial_len == 16 {
            let block = self.partial;
            self.hash_padded(&block);
            self.partial_len = 0;
        }
        let whole = (len - i) & !15;
        let Engine::Fast { k, ks, ks_used } = &mut self.engine else {
            return;
        };
        // Here the stream is block-aligned, so `partial` is empty.
        let end = i + whole;
        while i < end {
            let n = STRIPE.min(end - i);
            if encrypt {
                k.ctr_xor(inp.add(i), out.add(i), n);
                k.ghash(out.add(i), n);
            } else {
                k.ghash(inp.add(i), n);
                k.ctr_xor(inp.add(i), out.add(i), n);
            }
            i += n;
        }
        if i < len {
            *ks = k.keystream_block();
            let rest = len - i;
            for (j, kj) in ks.iter().enumerate().take(rest) {
                let c = *inp.add(i + j);
                let p = c ^ kj;
                *out.add(i + j) = p;
                self.partial[j] = if encrypt { p } else { c };
            }
            *ks_used = rest;
            self.partial_len = rest;
        }
    }

    /// Encrypt `buf` in place (any length; calls may split the stream anywhere).
    pub fn encrypt_in_place(&mut self, buf: &mut [u8]) -> Result<()> {
        self.account(buf.len())?;
        // SAFETY: in place, same pointer for input and output.
        unsafe { self.crypt(buf.as_ptr(), buf.as_mut_ptr(), buf.len(), true) };
        Ok(())
    }

    /// Encrypt `inp` into `out` (same length, else a usage error).
    pub fn encrypt(&mut self, inp: &[u8], out: &mut [u8]) -> Result<()> {
        check_len(inp, out)?;
        self.account(inp.len())?;
        // SAFETY: distinct borrows, equal lengths.
        unsafe { self.crypt(inp.as_ptr(), out.as_mut_ptr(), inp.len(), true) };
        Ok(())
    }

    /// Decrypt `buf` in place. The result is unauthenticated until [`Gcm::verify`] succeeds.
    pub fn decrypt_in_place(&mut self, buf: &mut [u8]) -> Result<()> {
        self.account(buf.len())?;
        // SAFETY: in place, same pointer for input and output.
        unsafe { self.crypt(buf.as_ptr(), buf.as_mut_ptr(), buf.len(), false) };
        Ok(())
    }

    /// Decrypt `inp` into `out` (same length). Unauthenticated until [`Gcm::verify`] succeeds.
    pub fn decrypt(&mut self, inp: &[u8], out: &mut [u8]) -> Result<()> {
        check_len(inp, out)?;
        self.account(inp.len())?;
        // SAFETY: distinct borrows, equal lengths.
        unsafe { self.crypt(inp.as_ptr(), out.as_mut_ptr(), inp.len(), false) };
        Ok(())
    }

    /// The tag: GHASH over AAD, ciphertext and the bit lengths, XOR E(K, J0).
    pub fn tag(mut self) -> [u8; TAG_LEN] {
        if self.partial_len > 0 {
            let tail = self.partial;
            self.hash_padded(&tail[..self.partial_len]);
        }
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(self.ct_len * 8).to_be_bytes());
        self.hash_padded(&lengths);
        let s: [u8; 16] = match self.engine {
            #[cfg(target_arch = "x86_64")]
            Engine::Fast { k, .. } => k.ghash_value(),
            Engine::Soft { ghash, .. } => ghash.finalize().into(),
        };
        let mut tag = [0u8; 16];
        for i in 0..16 {
            tag[i] = s[i] ^ self.tag_mask[i];
        }
        tag
    }

    /// Compare the computed tag with `tag` in constant time.
    pub fn verify(self, tag: &[u8]) -> Result<()> {
        if tag.len() != TAG_LEN {
            return Err(Error::usage(format!(
                "tag: AES-GCM tag must be 16 bytes, got {} bytes",
                tag.len()
            )));
        }
        let computed = self.tag();
        if bool::from(computed.ct_eq(tag)) {
            Ok(())
        } else {
            Err(Error::TagMismatch)
        }
    }
}

fn check_len(inp: &[u8], out: &[u8]) -> Result<()> {
    if inp.len() != out.len() {
        return Err(Error::usage(format!(
            "out: output buffer of {} bytes for {} bytes of input",
            out.len(),
            inp.len()
        )));
    }
    Ok(())
}

/// One-shot encryption: ciphertext || tag.
pub fn seal(key: &[u8], nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut g = Gcm::new(key, nonce, aad)?;
    let mut out = vec![0u8; plaintext.len() + TAG_LEN];
    let (ct, tag) = out.split_at_mut(plaintext.len());
    g.encrypt(plaintext, ct)?;
    tag.copy_from_slice(&g.tag());
    Ok(out)
}

/// One-shot decryption of ciphertext || tag; nothing is returned unless the tag verifies.
pub fn open(key: &[u8], nonce: &[u8], ct_and_tag: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut g = Gcm::new(key, nonce, aad)?;
    if ct_and_tag.len() < TAG_LEN {
        return Err(Error::usage(format!(
            "ciphertext_and_tag: shorter than the 16-byte tag ({} bytes)",
            ct_and_tag.len()
        )));
    }
    let (ct, tag) = ct_and_tag.split_at(ct_and_tag.len() - TAG_LEN);
    let mut out = vec![0u8; ct.len()];
    g.decrypt(ct, &mut out)?;
    g.verify(tag)?;
    Ok(out)
}

/// Bytes of plaintext buffered before one write to the spool file (bounds memory per object).
pub const SPOOL_BUFFER: usize = 256 * 1024;

/// Decryption that spools the (still unauthenticated) plaintext to an anonymous file and hands
/// the file out only after the tag has verified.
pub struct SpoolingDecryptor {
    gcm: Gcm,
    file: std::fs::File,
    /// Plaintext waiting to be written: `buf[..fill]`.
    buf: Vec<u8>,
    fill: usize,
}

impl SpoolingDecryptor {
    pub fn new(
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        let gcm = Gcm::new(key, nonce, aad)?;
        let file = crate::spool::anonymous(dir)?;
        Ok(SpoolingDecryptor {
            gcm,
            file,
            buf: vec![0; SPOOL_BUFFER],
            fill: 0,
        })
    }

    pub fn update(&mut self, mut data: &[u8]) -> Result<()> {
        use std::io::Write;
        while !data.is_empty() {
            let take = (SPOOL_BUFFER - self.fill).min(data.len());
            let dst = &mut self.buf[self.fill..self.fill + take];
            self.gcm.decrypt(&data[..take], dst)?;
            self.fill += take;
            data = &data[take..];
            if self.fill == SPOOL_BUFFER {
                self.file.write_all(&self.buf)?;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Verify `tag`; on success the spool file rewound to 0 and its size. On failure the file is
    /// dropped (closed, and being anonymous, gone).
    pub fn finalize(mut self, tag: &[u8]) -> Result<(std::fs::File, u64)> {
        use std::io::{Seek, SeekFrom, Write};
        let size = self.gcm.ct_len;
        self.gcm.verify(tag)?;
        self.file.write_all(&self.buf[..self.fill])?;
        self.file.flush()?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok((self.file, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::KeyIvInit;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    struct Vector {
        key: &'static str,
        iv: &'static str,
        pt: &'static str,
        aad: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    // The AES-256, 96-bit-IV test cases 13-16 of the GCM specification (McGrew/Viega), the
    // vectors NIST SP 800-38D validation uses.
    const VECTORS: &[Vector] = &[
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "",
            aad: "",
            ct: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "00000000000000000000000000000000",
            aad: "",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            aad: "",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn nist_vectors_one_shot() {
        for v in VECTORS {
            let out = seal(&unhex(v.key), &unhex(v.iv), &unhex(v.pt), &unhex(v.aad)).unwrap();
            let mut expect = unhex(v.ct);
            expect.extend(unhex(v.tag));
            assert_eq!(out, expect);
            let back = open(&unhex(v.key), &unhex(v.iv), &out, &unhex(v.aad)).unwrap();
            assert_eq!(back, unhex(v.pt));
        }
    }

    #[test]
    fn nist_vectors_every_split() {
        for v in VECTORS {
            let pt = unhex(v.pt);
            for split in 0..=pt.len() {
                for step in [1usize, 3, 7, 16, 17] {
                    let mut g = Gcm::new(&unhex(v.key), &unhex(v.iv), &unhex(v.aad)).unwrap();
                    let mut buf = pt.clone();
                    let (a, b) = buf.split_at_mut(split);
                    g.encrypt_in_place(a).unwrap();
                    for c in b.chunks_mut(step) {
                        g.encrypt_in_place(c).unwrap();
                    }
                    assert_eq!(buf, unhex(v.ct));
                    assert_eq!(g.tag().to_vec(), unhex(v.tag));
                }
            }
        }
    }

    #[test]
    fn altered_inputs_fail() {
        let v = &VECTORS[3];
        let sealed = seal(&unhex(v.key), &unhex(v.iv), &unhex(v.pt), &unhex(v.aad)).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                open(&unhex(v.key), &unhex(v.iv), &bad, &unhex(v.aad)),
                Err(Error::TagMismatch)
            );
        }
        assert_eq!(
            open(&unhex(v.key), &unhex(v.iv), &sealed, b"other"),
            Err(Error::TagMismatch)
        );
        assert!(matches!(
            Gcm::new(&[0; 16], &[0; 12], b""),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Gcm::new(&[0; 32], &[0; 16], b""),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            open(&[0; 32], &[0; 12], &[0; 15], b""),
            Err(Error::Usage(_))
        ));
    }

    /// Deterministic pseudo-random bytes (xorshift) for the engine comparisons.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Every engine (VAES lanes, 128-bit AES-NI, portable) gives the same ciphertext and tag for
    /// the same stream cut at awkward places, and each decrypts the others' output.
    #[test]
    fn engines_agree_on_any_split() {
        let key = noise(32, 1);
        let nonce = noise(12, 2);
        for (len, aad_len) in [
            (0usize, 0usize),
            (1, 1),
            (15, 16),
            (16, 17),
            (127, 3),
            (128, 0),
            (255, 5),
            (256, 0),
            (4095, 1),
            (4096, 31),
            (9000, 100),
            (70_001, 7),
        ] {
            let pt = noise(len, len as u64 + 3);
            let aad = noise(aad_len, 9);
            let mut results = Vec::new();
            for mode in 0..3 {
                for step in [1usize, 13, 16, 300, 4097, usize::MAX] {
                    if step < 16 && len > 5000 {
                        continue;
                    }
                    let mut g = Gcm::with_engine(&key, &nonce, &aad, mode != 2).unwrap();
                    if mode == 1 {
                        g.disable_vaes();
                    }
                    assert_eq!(g.is_fast(), mode != 2 && cfg!(target_arch = "x86_64"));
                    let mut ct = vec![0u8; len];
                    let mut off = 0;
                    while off < len {
                        let n = step.min(len - off);
                        if off % 2 == 0 {
                            g.encrypt(&pt[off..off + n], &mut ct[off..off + n]).unwrap();
                        } else {
                            ct[off..off + n].copy_from_slice(&pt[off..off + n]);
                            g.encrypt_in_place(&mut ct[off..off + n]).unwrap();
                        }
                        off += n;
                    }
                    let tag = g.tag();
                    let mut d = Gcm::with_engine(&key, &nonce, &aad, mode == 2).unwrap();
                    let mut back = vec![0u8; len];
                    let mut off = 0;
                    while off < len {
                        let n = step.min(len - off).min(777);
                        d.decrypt(&ct[off..off + n], &mut back[off..off + n])
                            .unwrap();
                        off += n;
                    }
                    d.verify(&tag).unwrap();
                    assert_eq!(back, pt);
                    results.push((ct, tag));
                }
            }
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "len {len}: engines differ"
            );
        }
    }

    /// A long stream with AAD matches ring, an independent AES-GCM implementation.
    #[test]
    fn long_stream_matches_ring() {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let key = noise(32, 5);
        let nonce = noise(12, 6);
        let pt = noise(100_003, 7);
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        let mut expect = pt.clone();
        let n = Nonce::try_assume_unique_for_key(&nonce).unwrap();
        let tag = k
            .seal_in_place_separate_tag(n, Aad::from(b"hdr"), &mut expect)
            .unwrap();
        expect.extend_from_slice(tag.as_ref());
        assert_eq!(seal(&key, &nonce, &pt, b"hdr").unwrap(), expect);
    }

    /// `cargo test --release -- --ignored --nocapture bench_gcm`
    #[test]
    #[ignore]
    fn bench_gcm() {
        let mut data = vec![0x5au8; 25 * 1024 * 1024];
        for _ in 0..2 {
            let mut g = Gcm::new(&[1; 32], &[2; 12], b"").unwrap();
            g.encrypt_in_place(&mut data).unwrap();
        }
        let t = std::time::Instant::now();
        let mut g = Gcm::new(&[1; 32], &[2; 12], b"").unwrap();
        for c in data.chunks_mut(65536) {
            g.encrypt_in_place(c).unwrap();
        }
        let _ = g.tag();
        println!("gcm encrypt {:.0} MB/s", 25.0 / t.elapsed().as_secs_f64());
        let mut out = vec![1u8; data.len()];
        for (name, fast) in [("fast", true), ("portable", false)] {
            let t = std::time::Instant::now();
            let mut g = Gcm::with_engine(&[1; 32], &[2; 12], b"", fast).unwrap();
            for (i, o) in data.chunks(1 << 20).zip(out.chunks_mut(1 << 20)) {
                g.encrypt(i, o).unwrap();
            }
            let _ = g.tag();
            let s1 = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let mut g = Gcm::with_engine(&[1; 32], &[2; 12], b"", fast).unwrap();
            for (i, o) in out.chunks(1 << 20).zip(data.chunks_mut(1 << 20)) {
                g.decrypt(i, o).unwrap();
            }
            let _ = g.tag();
            let s2 = t.elapsed().as_secs_f64();
            println!(
                "  {name} b2b encrypt {:.0} MB/s, decrypt {:.0} MB/s",
                25.0 / s1,
                25.0 / s2
            );
        }
        #[cfg(target_arch = "x86_64")]
        {
            let (mut k, _) = crate::gcm_x86::Kernel::new(&[1; 32], &[2; 12]);
            let t = std::time::Instant::now();
            unsafe { k.ctr_xor(data.as_ptr(), out.as_mut_ptr(), data.len()) };
            println!("  kernel ctr {:.0} MB/s", 25.0 / t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            unsafe { k.ghash(data.as_ptr(), data.len()) };
            println!(
                "  kernel ghash {:.0} MB/s",
                25.0 / t.elapsed().as_secs_f64()
            );
        }
        let t = std::time::Instant::now();
        let mut c = Ctr::new(&[1u8; 32].into(), &[2u8; 16].into());
        for ch in data.chunks_mut(65536) {
            c.apply_keystream(ch);
        }
        println!("  ctr alone {:.0} MB/s", 25.0 / t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let mut h = GHash::new(&[3u8; 16].into());
        h.update_padded(&data);
        std::hint::black_box(h.finalize());
        println!("  ghash alone {:.0} MB/s", 25.0 / t.elapsed().as_secs_f64());
    }
}
