//! Streaming AES-256-GCM per NIST SP 800-38D, built from the RustCrypto `aes` block cipher
//! (AES-NI), `ctr` (32-bit big-endian counter) and `ghash` (PCLMULQDQ). The one-shot AEAD crates
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

/// The GCM state shared by encryption and decryption.
pub struct Gcm {
    ctr: Ctr,
    ghash: GHash,
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
            ctr,
            ghash,
            partial: [0; 16],
            partial_len: 0,
            aad_len: aad.len() as u64,
            ct_len: 0,
            tag_mask: mask.into(),
        })
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
            self.ghash.update_padded(&block);
            self.partial_len = 0;
        }
        let whole = ct.len() & !15;
        self.ghash.update_padded(&ct[..whole]);
        let tail = &ct[whole..];
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
    }

    /// Encrypt `buf` in place (any length; calls may split the stream anywhere).
    pub fn encrypt_in_place(&mut self, buf: &mut [u8]) -> Result<()> {
        self.account(buf.len())?;
        self.ctr.apply_keystream(buf);
        self.hash_ciphertext(buf);
        Ok(())
    }

    /// Decrypt `buf` in place. The result is unauthenticated until [`Gcm::verify`] succeeds.
    pub fn decrypt_in_place(&mut self, buf: &mut [u8]) -> Result<()> {
        self.account(buf.len())?;
        self.hash_ciphertext(buf);
        self.ctr.apply_keystream(buf);
        Ok(())
    }

    /// The tag: GHASH over AAD, ciphertext and the bit lengths, XOR E(K, J0).
    pub fn tag(mut self) -> [u8; TAG_LEN] {
        if self.partial_len > 0 {
            let tail = self.partial;
            self.ghash.update_padded(&tail[..self.partial_len]);
        }
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(self.ct_len * 8).to_be_bytes());
        self.ghash.update_padded(&lengths);
        let s: [u8; 16] = self.ghash.finalize().into();
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

/// One-shot encryption: ciphertext || tag.
pub fn seal(key: &[u8], nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut g = Gcm::new(key, nonce, aad)?;
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    g.encrypt_in_place(&mut out)?;
    out.extend_from_slice(&g.tag());
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
    let mut out = ct.to_vec();
    g.decrypt_in_place(&mut out)?;
    g.verify(tag)?;
    Ok(out)
}

/// Bytes of plaintext buffered before one write to the spool file (bounds memory per object).
pub const SPOOL_BUFFER: usize = 64 * 1024;

/// Decryption that spools the (still unauthenticated) plaintext to an anonymous file and hands
/// the file out only after the tag has verified.
pub struct SpoolingDecryptor {
    gcm: Gcm,
    file: std::fs::File,
    buf: Vec<u8>,
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
            buf: Vec::with_capacity(SPOOL_BUFFER),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) -> Result<()> {
        use std::io::Write;
        while !data.is_empty() {
            let take = (SPOOL_BUFFER - self.buf.len()).min(data.len());
            let start = self.buf.len();
            self.buf.extend_from_slice(&data[..take]);
            self.gcm.decrypt_in_place(&mut self.buf[start..])?;
            data = &data[take..];
            if self.buf.len() == SPOOL_BUFFER {
                self.file.write_all(&self.buf)?;
                self.buf.clear();
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
        self.file.write_all(&self.buf)?;
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

    /// `cargo test --release -- --ignored --nocapture bench_gcm`
    #[test]
    #[ignore]
    fn bench_gcm() {
        let mut data = vec![0x5au8; 25 * 1024 * 1024];
        let t = std::time::Instant::now();
        let mut g = Gcm::new(&[1; 32], &[2; 12], b"").unwrap();
        for c in data.chunks_mut(65536) {
            g.encrypt_in_place(c).unwrap();
        }
        let _ = g.tag();
        println!("gcm encrypt {:.0} MB/s", 25.0 / t.elapsed().as_secs_f64());
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
