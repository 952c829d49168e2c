//! AVX2 kernels for base64 (RFC 4648 alphabet), after Muła and Lemire, "Faster Base64 Encoding
//! and Decoding Using AVX2 Instructions" (ACM TWEB 2018): 24 bytes to 32 characters per step and
//! back. Used only after runtime detection of AVX2; `base64.rs` keeps the scalar code for the
//! tails and for error reporting. These kernels must never accept a character outside the
//! alphabet: the decoder stops at the first 32-character block that holds one.
#![allow(unsafe_op_in_unsafe_fn)]

use core::arch::x86_64::*;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

#[inline(always)]
unsafe fn enc_reshuffle(input: __m256i) -> __m256i {
    let inp = _mm256_shuffle_epi8(
        input,
        _mm256_set_epi8(
            10, 11, 9, 10, 7, 8, 6, 7, 4, 5, 3, 4, 1, 2, 0, 1, 14, 15, 13, 14, 11, 12, 10, 11, 8,
            9, 7, 8, 5, 6, 4, 5,
        ),
    );
    let t0 = _mm256_and_si256(inp, _mm256_set1_epi32(0x0FC0_FC00));
    let t1 = _mm256_mulhi_epu16(t0, _mm256_set1_epi32(0x0400_0040));
    let t2 = _mm256_and_si256(inp, _mm256_set1_epi32(0x003F_03F0));
    let t3 = _mm256_mullo_epi16(t2, _mm256_set1_epi32(0x0100_0010));
    _mm256_or_si256(t1, t3)
}

#[inline(always)]
unsafe fn enc_translate(v: __m256i) -> __m256i {
    let lut = _mm256_setr_epi8(
        65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0, 65, 71, -4, -4, -4, -4, -4,
        -4, -4, -4, -4, -4, -19, -16, 0, 0,
    );
    let mut idx = _mm256_subs_epu8(v, _mm256_set1_epi8(51));
    let mask = _mm256_cmpgt_epi8(v, _mm256_set1_epi8(25));
    idx = _mm256_sub_epi8(idx, mask);
    _mm256_add_epi8(v, _mm256_shuffle_epi8(lut, idx))
}

/// Encode as many 24-byte steps of `inp` as is safe into `out`; returns (bytes read, chars
/// written). Needs `out.len() >= inp.len() / 3 * 4`.
///
/// # Safety
/// The CPU must have AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn encode(inp: &[u8], out: &mut [u8]) -> (usize, usize) {
    let n = inp.len();
    if n < 32 || out.len() < n / 3 * 4 {
        return (0, 0);
    }
    let s = inp.as_ptr();
    let o = out.as_mut_ptr();
    // First step loads at s (not s - 4) and shifts the lanes by 4 bytes.
    let first = _mm256_loadu_si256(s as *const __m256i);
    let first = _mm256_permutevar8x32_epi32(first, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6));
    _mm256_storeu_si256(o as *mut __m256i, enc_translate(enc_reshuffle(first)));
    let (mut i, mut j) = (24usize, 32usize);
    // Later steps load 32 bytes at s + i - 4, so need i + 28 <= n.
    while i + 28 <= n {
        let v = _mm256_loadu_si256(s.add(i - 4) as *const __m256i);
        _mm256_storeu_si256(o.add(j) as *mut __m256i, enc_translate(enc_reshuffle(v)));
        i += 24;
        j += 32;
    }
    (i, j)
}

/// Decode 32-character blocks of alphabet characters from `inp` into `out` until a block holds
/// anything else or fewer than 32 characters (or 32 bytes of output room) are left; returns
/// (chars read, bytes written).
///
/// # Safety
/// The CPU must have AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub unsafe fn decode(inp: &[u8], out: &mut [u8]) -> (usize, usize) {
    let lut_lo = _mm256_setr_epi8(
        0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B,
        0x1A, 0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B,
        0x1B, 0x1A,
    );
    let lut_hi = _mm256_setr_epi8(
        0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
        0x10, 0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
        0x10, 0x10,
    );
    let lut_roll = _mm256_setr_epi8(
        0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 19, 4, -65, -65, -71, -71,
        0, 0, 0, 0, 0, 0, 0, 0,
    );
    let mask_2f = _mm256_set1_epi8(0x2F);
    let pack = _mm256_setr_epi8(
        2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1, 2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13,
        12, -1, -1, -1, -1,
    );
    let lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, -1, -1);
    let (mut i, mut j) = (0usize, 0usize);
    let s = inp.as_ptr();
    let o = out.as_mut_ptr();
    while i + 32 <= inp.len() && j + 32 <= out.len() {
        let v = _mm256_loadu_si256(s.add(i) as *const __m256i);
        let hi_n = _mm256_and_si256(_mm256_srli_epi32::<4>(v), mask_2f);
        let lo_n = _mm256_and_si256(v, mask_2f);
        let hi = _mm256_shuffle_epi8(lut_hi, hi_n);
        let lo = _mm256_shuffle_epi8(lut_lo, lo_n);
        if _mm256_testz_si256(lo, hi) == 0 {
            break;
        }
        let eq_2f = _mm256_cmpeq_epi8(v, mask_2f);
        let roll = _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_2f, hi_n));
        let v = _mm256_add_epi8(v, roll);
        let m = _mm256_maddubs_epi16(v, _mm256_set1_epi32(0x0140_0140));
        let m = _mm256_madd_epi16(m, _mm256_set1_epi32(0x0001_1000));
        let m = _mm256_shuffle_epi8(m, pack);
        let m = _mm256_permutevar8x32_epi32(m, lanes);
        _mm256_storeu_si256(o.add(j) as *mut __m256i, m);
        i += 32;
        j += 24;
    }
    (i, j)
}
