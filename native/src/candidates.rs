//! Timing harness for `bench/native.py` (feature `bench-candidates` only; never shipped): the
//! libraries the extension could use, run on the same data, chunking and buffers, so that the
//! choice in `gcm.rs` and `base64.rs` rests on one measurement. GCM: OpenSSL EVP streaming (what
//! ships) against RustCrypto `aes-gcm` and ring, which are one-shot AEADs (they cannot stream a
//! message; they are timed over the whole buffer, their best case). Base64: `base64-simd` (what
//! ships) against the `base64` crate, both behind the same MIME framing. It must never be used
//! as a test, and never be built into the shipped extension.
use std::time::Instant;

use crate::base64::{Codec, Decoder, Encoder, Scalar, Simd};
use crate::error::{Error, Result};
use crate::gcm;

const KEY: [u8; 32] = [0x42; 32];
const NONCE: [u8; 12] = [0x24; 12];

pub const GCM_ENGINES: &[&str] = &["openssl-evp", "rustcrypto-aes-gcm", "ring"];
pub const BASE64_CODECS: &[&str] = &["base64-simd", "base64"];

/// Seconds of each of `repeat` runs, after one untimed run that faults the buffers in.
fn timed(repeat: usize, mut run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    run()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn unknown(what: &str, name: &str, known: &[&str]) -> Error {
    Error::usage(format!(
        "{what}: unknown candidate {name:?}, expected one of {known:?}"
    ))
}

/// Seconds per run of AES-256-GCM over `data` (decryption: of its ciphertext, tag verified),
/// fed in `chunk`-byte pieces where the engine streams.
pub fn gcm(
    engine: &str,
    encrypt: bool,
    data: &[u8],
    chunk: usize,
    repeat: usize,
) -> Result<Vec<f64>> {
    let chunk = chunk.max(1);
    let sealed = gcm::seal(&KEY, &NONCE, data, b"")?;
    let (ct, tag) = sealed.split_at(data.len());
    let mut out = vec![0u8; data.len()];
    match engine {
        "openssl-evp" if encrypt => timed(repeat, || {
            let mut e = gcm::Encryptor::new(&KEY, &NONCE, b"")?;
            for (i, o) in data.chunks(chunk).zip(out.chunks_mut(chunk)) {
                e.update(i, o)?;
            }
            e.finalize().map(|_| ())
        }),
        "openssl-evp" => timed(repeat, || {
            let mut d = gcm::Decryptor::new(&KEY, &NONCE, b"")?;
            for (i, o) in ct.chunks(chunk).zip(out.chunks_mut(chunk)) {
                d.update(i, o)?;
            }
            d.verify(tag)
        }),
        "rustcrypto-aes-gcm" => {
            use aes_gcm::aead::{AeadInOut, KeyInit};
            let cipher = aes_gcm::Aes256Gcm::new(&KEY.into());
            let nonce = aes_gcm::Nonce::from(NONCE);
            let tag = aes_gcm::Tag::try_from(tag).map_err(|_| Error::usage("tag"))?;
            let src = if encrypt { data } else { ct };
            // In place over the whole message: the input is copied in before each run (the
            // copy is timed too, as the streaming engine's separate output is).
            timed(repeat, || {
                out.copy_from_slice(src);
                if encrypt {
                    cipher
                        .encrypt_inout_detached(&nonce, b"", out.as_mut_slice().into())
                        .map(|_| ())
                        .map_err(|_| Error::usage("aes-gcm encrypt"))
                } else {
                    cipher
                        .decrypt_inout_detached(&nonce, b"", out.as_mut_slice().into(), &tag)
                        .map_err(|_| Error::TagMismatch)
                }
            })
        }
        "ring" => {
            use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
            let key = LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &KEY).map_err(|_| Error::usage("ring key"))?,
            );
            let tag: [u8; 16] = tag.try_into().map_err(|_| Error::usage("tag"))?;
            let src = if encrypt { data } else { ct };
            timed(repeat, || {
                out.copy_from_slice(src);
                let nonce = Nonce::assume_unique_for_key(NONCE);
                if encrypt {
                    key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut out)
                        .map(|_| ())
                        .map_err(|_| Error::usage("ring seal"))
                } else {
                    key.open_in_place_separate_tag(
                        nonce,
                        Aad::empty(),
                        Tag::from(tag),
                        &mut out,
                        0..,
                    )
                    .map(|_| ())
                    .map_err(|_| Error::TagMismatch)
                }
            })
        }
        other => Err(unknown("engine", other, GCM_ENGINES)),
    }
}

fn base64_with<C: Codec>(
    encode: bool,
    data: &[u8],
    chunk: usize,
    line_length: usize,
    repeat: usize,
) -> Result<Vec<f64>> {
    let mut e = Encoder::<C>::new(line_length)?;
    let mut text = e.update(data);
    text.extend(e.finalize());
    let mut out = vec![0u8; text.len().max(data.len()) + 16];
    if encode {
        timed(repeat, || {
            let mut e = Encoder::<C>::new(line_length)?;
            let mut w = 0;
            for c in data.chunks(chunk) {
                let n = e.output_len(c.len());
                w += e.update_into(c, &mut out[w..w + n]);
            }
            let tail = e.finalize();
            out[w..w + tail.len()].copy_from_slice(&tail);
            Ok(())
        })
    } else {
        let mut w = 0;
        let times = timed(repeat, || {
            let mut d = Decoder::<C>::new();
            w = 0;
            for c in text.chunks(chunk) {
                let n = d.begin(c)?;
                w += d.finish(c, &mut out[w..w + n])?;
            }
            d.finalize().map(|_| ())
        })?;
        if out[..w] != *data {
            return Err(Error::usage("base64 candidate decoded wrong data"));
        }
        Ok(times)
    }
}

/// Seconds per run of MIME base64 (`line_length` columns, CRLF) encoding `data`, or decoding
/// its encoding, in `chunk`-byte pieces.
pub fn base64(
    codec: &str,
    encode: bool,
    data: &[u8],
    chunk: usize,
    line_length: usize,
    repeat: usize,
) -> Result<Vec<f64>> {
    let chunk = chunk.max(1);
    match codec {
        "base64-simd" => base64_with::<Simd>(encode, data, chunk, line_length, repeat),
        "base64" => base64_with::<Scalar>(encode, data, chunk, line_length, repeat),
        other => Err(unknown("codec", other, BASE64_CODECS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_candidate_runs() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for engine in GCM_ENGINES {
            for encrypt in [true, false] {
                assert_eq!(gcm(engine, encrypt, &data, 4096, 2).unwrap().len(), 2);
            }
        }
        for codec in BASE64_CODECS {
            for encode in [true, false] {
                assert_eq!(base64(codec, encode, &data, 4096, 76, 2).unwrap().len(), 2);
            }
        }
        assert!(gcm("nope", true, &data, 1, 1).is_err());
    }
}
