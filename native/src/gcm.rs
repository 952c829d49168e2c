//! Streaming AES-256-GCM (NIST SP 800-38D) on OpenSSL's EVP interface through the `openssl`
//! crate, linked against the system's libssl: the implementation auditors already know, with
//! its AES-NI/VAES and carry-less-multiply code. One-shot AEAD crates (RustCrypto `aes-gcm`,
//! ring, aws-lc-rs) cannot stream a 25 MB message; EVP can, in constant memory. This module only
//! frames the EVP calls: it must never implement any part of the cipher itself, never release a
//! tag for more plaintext than SP 800-38D allows (2^39 - 256 bits), and never hand out decrypted
//! bytes as authenticated before `EVP_DecryptFinal_ex` has checked the tag (which OpenSSL
//! compares in constant time, `CRYPTO_memcmp`). Only 96-bit nonces (what KOM-LE/KIM use,
//! digest §2.6) and 128-bit tags.
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// SP 800-38D §5.2.1.1: len(P) <= 2^39 - 256 bits.
pub const MAX_PLAINTEXT: u64 = (1 << 36) - 32;
/// Largest input handed to one `EVP_CipherUpdate` (its length is a C `int`); longer slices are
/// fed in pieces of this size.
const MAX_EVP_UPDATE: usize = 1 << 30;

fn openssl_error(what: &str, e: ErrorStack) -> Error {
    Error::Crypto(format!("{what}: {e}"))
}

/// An EVP context for AES-256-GCM in one direction, keyed, with the AAD already absorbed, and
/// the count of payload bytes seen (for the SP 800-38D limit).
struct Evp {
    ctx: CipherCtx,
    len: u64,
}

impl Evp {
    fn new(key: &[u8], nonce: &[u8], aad: &[u8], encrypt: bool) -> Result<Self> {
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
        let init = || -> std::result::Result<CipherCtx, ErrorStack> {
            let mut ctx = CipherCtx::new()?;
            let cipher = Cipher::aes_256_gcm();
            // The default GCM IV length of EVP is 12 bytes, the only one allowed here.
            if encrypt {
                ctx.encrypt_init(Some(cipher), Some(key), Some(nonce))?;
            } else {
                ctx.decrypt_init(Some(cipher), Some(key), Some(nonce))?;
            }
            for piece in aad.chunks(MAX_EVP_UPDATE) {
                // No output buffer: EVP takes the input as AAD.
                ctx.cipher_update(piece, None)?;
            }
            Ok(ctx)
        };
        let ctx = init().map_err(|e| openssl_error("AES-256-GCM init", e))?;
        Ok(Evp { ctx, len: 0 })
    }

    fn update(&mut self, inp: &[u8], out: &mut [u8]) -> Result<()> {
        if inp.len() != out.len() {
            return Err(Error::usage(format!(
                "out: output buffer of {} bytes for {} bytes of input",
                out.len(),
                inp.len()
            )));
        }
        let total = self.len.saturating_add(inp.len() as u64);
        if total > MAX_PLAINTEXT {
            return Err(Error::usage(
                "data: AES-GCM message longer than 2^36 - 32 bytes (SP 800-38D limit)",
            ));
        }
        for (i, o) in inp
            .chunks(MAX_EVP_UPDATE)
            .zip(out.chunks_mut(MAX_EVP_UPDATE))
        {
            // GCM is a stream mode in EVP (block size 1): every input byte comes out at once,
            // so the output of each call is exactly as long as its input.
            let n = self
                .ctx
                .cipher_update(i, Some(o))
                .map_err(|e| openssl_error("AES-256-GCM update", e))?;
            if n != i.len() {
                return Err(Error::Crypto(format!(
                    "AES-256-GCM update: OpenSSL wrote {n} bytes for {} bytes of input",
                    i.len()
                )));
            }
        }
        self.len = total;
        Ok(())
    }
}

/// Streaming AES-256-GCM encryption: ciphertext as the plaintext arrives, the tag at the end.
pub struct Encryptor {
    evp: Evp,
}

impl Encryptor {
    pub fn new(key: &[u8], nonce: &[u8], aad: &[u8]) -> Result<Self> {
        Ok(Encryptor {
            evp: Evp::new(key, nonce, aad, true)?,
        })
    }

    /// Encrypt `inp` into `out` (same length, else a usage error); calls may split the stream
    /// anywhere.
    pub fn update(&mut self, inp: &[u8], out: &mut [u8]) -> Result<()> {
        self.evp.update(inp, out)
    }

    /// Bytes encrypted so far.
    pub fn len(&self) -> u64 {
        self.evp.len
    }

    pub fn is_empty(&self) -> bool {
        self.evp.len == 0
    }

    /// Finish and return the 16-byte tag.
    pub fn finalize(mut self) -> Result<[u8; TAG_LEN]> {
        let mut none = [0u8; 0];
        let n = self
            .evp
            .ctx
            .cipher_final(&mut none)
            .map_err(|e| openssl_error("AES-256-GCM final", e))?;
        debug_assert_eq!(n, 0);
        let mut tag = [0u8; TAG_LEN];
        self.evp
            .ctx
            .tag(&mut tag)
            .map_err(|e| openssl_error("AES-256-GCM tag", e))?;
        Ok(tag)
    }
}

/// Streaming AES-256-GCM decryption. What [`Decryptor::update`] writes is unauthenticated
/// until [`Decryptor::verify`] has returned `Ok`: callers must keep it from anyone until then
/// (as [`SpoolingDecryptor`] does).
pub struct Decryptor {
    evp: Evp,
}

impl Decryptor {
    pub fn new(key: &[u8], nonce: &[u8], aad: &[u8]) -> Result<Self> {
        Ok(Decryptor {
            evp: Evp::new(key, nonce, aad, false)?,
        })
    }

    /// Decrypt `inp` into `out` (same length). Unauthenticated until `verify` succeeds.
    pub fn update(&mut self, inp: &[u8], out: &mut [u8]) -> Result<()> {
        self.evp.update(inp, out)
    }

    /// Bytes decrypted so far.
    pub fn len(&self) -> u64 {
        self.evp.len
    }

    pub fn is_empty(&self) -> bool {
        self.evp.len == 0
    }

    /// Check `tag` against the stream (OpenSSL compares in constant time).
    pub fn verify(mut self, tag: &[u8]) -> Result<()> {
        if tag.len() != TAG_LEN {
            return Err(Error::usage(format!(
                "tag: AES-GCM tag must be 16 bytes, got {} bytes",
                tag.len()
            )));
        }
        self.evp
            .ctx
            .set_tag(tag)
            .map_err(|e| openssl_error("AES-256-GCM set tag", e))?;
        let mut none = [0u8; 0];
        // EVP_DecryptFinal_ex fails exactly when the tag does not match (GCM has no padding
        // and nothing buffered to fail on otherwise).
        match self.evp.ctx.cipher_final(&mut none) {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::TagMismatch),
        }
    }
}

/// One-shot encryption: ciphertext || tag.
pub fn seal(key: &[u8], nonce: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut e = Encryptor::new(key, nonce, aad)?;
    let mut out = vec![0u8; plaintext.len() + TAG_LEN];
    let (ct, tag) = out.split_at_mut(plaintext.len());
    e.update(plaintext, ct)?;
    tag.copy_from_slice(&e.finalize()?);
    Ok(out)
}

/// One-shot decryption of ciphertext || tag; nothing is returned unless the tag verifies.
pub fn open(key: &[u8], nonce: &[u8], ct_and_tag: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut d = Decryptor::new(key, nonce, aad)?;
    if ct_and_tag.len() < TAG_LEN {
        return Err(Error::usage(format!(
            "ciphertext_and_tag: shorter than the 16-byte tag ({} bytes)",
            ct_and_tag.len()
        )));
    }
    let (ct, tag) = ct_and_tag.split_at(ct_and_tag.len() - TAG_LEN);
    let mut out = vec![0u8; ct.len()];
    d.update(ct, &mut out)?;
    d.verify(tag)?;
    Ok(out)
}

/// Bytes of plaintext buffered before one write to the spool file (bounds memory per object).
pub const SPOOL_BUFFER: usize = 256 * 1024;

/// Decryption that spools the (still unauthenticated) plaintext to an anonymous file and hands
/// the file out only after the tag has verified.
pub struct SpoolingDecryptor {
    dec: Decryptor,
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
        let dec = Decryptor::new(key, nonce, aad)?;
        let file = crate::spool::anonymous(dir)?;
        Ok(SpoolingDecryptor {
            dec,
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
            self.dec.update(&data[..take], dst)?;
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
        let size = self.dec.len();
        self.dec.verify(tag)?;
        self.file.write_all(&self.buf[..self.fill])?;
        self.file.flush()?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok((self.file, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let ct = unhex(v.ct);
            for split in 0..=pt.len() {
                for step in [1usize, 3, 7, 16, 17] {
                    let mut e = Encryptor::new(&unhex(v.key), &unhex(v.iv), &unhex(v.aad)).unwrap();
                    let mut d = Decryptor::new(&unhex(v.key), &unhex(v.iv), &unhex(v.aad)).unwrap();
                    let mut out = vec![0u8; pt.len()];
                    let mut back = vec![0u8; pt.len()];
                    let (a, b) = out.split_at_mut(split);
                    e.update(&pt[..split], a).unwrap();
                    d.update(&ct[..split], &mut back[..split]).unwrap();
                    for (i, (c, o)) in pt[split..].chunks(step).zip(b.chunks_mut(step)).enumerate()
                    {
                        e.update(c, o).unwrap();
                        let at = split + i * step;
                        let n = c.len();
                        d.update(&ct[at..at + n], &mut back[at..at + n]).unwrap();
                    }
                    assert_eq!(out, ct);
                    assert_eq!(e.finalize().unwrap().to_vec(), unhex(v.tag));
                    d.verify(&unhex(v.tag)).unwrap();
                    assert_eq!(back, pt);
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
            Encryptor::new(&[0; 16], &[0; 12], b""),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            Decryptor::new(&[0; 32], &[0; 16], b""),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            open(&[0; 32], &[0; 12], &[0; 15], b""),
            Err(Error::Usage(_))
        ));
        let d = Decryptor::new(&[0; 32], &[0; 12], b"").unwrap();
        assert!(matches!(d.verify(&[0; 12]), Err(Error::Usage(_))));
        let mut e = Encryptor::new(&[0; 32], &[0; 12], b"").unwrap();
        assert!(matches!(
            e.update(&[0; 4], &mut [0; 5]),
            Err(Error::Usage(_))
        ));
    }

    /// The SP 800-38D length limit is enforced before OpenSSL sees the bytes.
    #[test]
    fn length_limit() {
        let mut e = Encryptor::new(&[0; 32], &[0; 12], b"").unwrap();
        // Pretend the stream is already at the limit (feeding 64 GiB is not a unit test).
        e.evp.len = MAX_PLAINTEXT - 1;
        e.update(&[0], &mut [0]).unwrap();
        let err = e.update(&[0], &mut [0]).unwrap_err();
        assert!(err.to_string().contains("SP 800-38D"), "{err}");
    }

    /// Deterministic pseudo-random bytes (xorshift).
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

    /// Streams cut at awkward places match ring, an independent AES-GCM implementation, and
    /// decrypt back.
    #[test]
    fn any_split_matches_ring() {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let key = noise(32, 1);
        let nonce = noise(12, 2);
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        for (len, aad_len) in [
            (0usize, 0usize),
            (1, 1),
            (15, 16),
            (16, 17),
            (127, 3),
            (255, 5),
            (4096, 31),
            (70_001, 7),
        ] {
            let pt = noise(len, len as u64 + 3);
            let aad = noise(aad_len, 9);
            let mut expect = pt.clone();
            let n = Nonce::try_assume_unique_for_key(&nonce).unwrap();
            let tag = k
                .seal_in_place_separate_tag(n, Aad::from(&aad), &mut expect)
                .unwrap();
            for step in [1usize, 13, 16, 300, 4097, usize::MAX] {
                if step < 16 && len > 5000 {
                    continue;
                }
                let mut e = Encryptor::new(&key, &nonce, &aad).unwrap();
                let mut ct = vec![0u8; len];
                for (i, o) in pt.chunks(step).zip(ct.chunks_mut(step)) {
                    e.update(i, o).unwrap();
                }
                assert_eq!(ct, expect, "len {len} step {step}");
                assert_eq!(e.finalize().unwrap(), tag.as_ref(), "len {len} step {step}");
                let mut d = Decryptor::new(&key, &nonce, &aad).unwrap();
                let mut back = vec![0u8; len];
                for (i, o) in ct.chunks(step.min(777)).zip(back.chunks_mut(step.min(777))) {
                    d.update(i, o).unwrap();
                }
                d.verify(tag.as_ref()).unwrap();
                assert_eq!(back, pt);
            }
        }
    }

    #[test]
    fn spooling_decryptor_releases_only_after_the_tag() {
        use std::io::Read;
        let key = noise(32, 4);
        let nonce = noise(12, 5);
        let pt = noise(SPOOL_BUFFER * 2 + 17, 6);
        let sealed = seal(&key, &nonce, &pt, b"hdr").unwrap();
        let (ct, tag) = sealed.split_at(pt.len());
        let mut s = SpoolingDecryptor::new(&key, &nonce, b"hdr", None).unwrap();
        for c in ct.chunks(100_000) {
            s.update(c).unwrap();
        }
        let (mut f, size) = s.finalize(tag).unwrap();
        assert_eq!(size, pt.len() as u64);
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, pt);
        let mut s = SpoolingDecryptor::new(&key, &nonce, b"hdr", None).unwrap();
        s.update(ct).unwrap();
        let mut bad = tag.to_vec();
        bad[0] ^= 0x80;
        assert!(matches!(s.finalize(&bad), Err(Error::TagMismatch)));
    }
}
