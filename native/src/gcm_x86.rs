//! The x86-64 fast path of AES-256-GCM (NIST SP 800-38D): AES-NI (or VAES on 256-bit lanes) for
//! the CTR keystream and PCLMULQDQ for GHASH with aggregated reduction (eight blocks per
//! reduction, precomputed H^1..H^8). GHASH is computed as POLYVAL over byte-reversed blocks
//! (RFC 8452 Appendix A), whose reduction needs no bit reflection. Used only after runtime
//! feature detection (`Kernel::detect`); `gcm.rs` keeps the portable RustCrypto path as the
//! fallback. This module must never be called on a CPU without AES-NI, PCLMULQDQ and SSE4.1,
//! and never touch key material outside the `Kernel` it owns.
#![allow(unsafe_op_in_unsafe_fn)]

use core::arch::x86_64::*;

/// Round keys and GHASH key powers for one AES-256-GCM key, plus the running state.
#[derive(Clone, Copy)]
pub struct Kernel {
    rk: [__m128i; 15],
    /// POLYVAL-domain H^1..H^8 (index 0 holds H^1).
    hpow: [__m128i; 8],
    /// POLYVAL-domain GHASH accumulator.
    acc: __m128i,
    /// The nonce in bytes 0..12, zero in the counter bytes 12..16.
    nonce_block: __m128i,
    /// The next 32-bit counter value.
    ctr: u32,
    vaes: bool,
    /// VPCLMULQDQ on 256-bit lanes (two blocks per instruction) for GHASH.
    vclmul: bool,
}

// SAFETY of Send: the SIMD registers are plain data.
unsafe impl Send for Kernel {}

#[inline(always)]
unsafe fn bswap(x: __m128i) -> __m128i {
    _mm_shuffle_epi8(
        x,
        _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    )
}

macro_rules! key_round {
    ($t1:ident, $t3:ident, $rcon:literal) => {{
        let t2 = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>($t3));
        let mut t4 = _mm_slli_si128::<4>($t1);
        $t1 = _mm_xor_si128($t1, t4);
        t4 = _mm_slli_si128::<4>(t4);
        $t1 = _mm_xor_si128($t1, t4);
        t4 = _mm_slli_si128::<4>(t4);
        $t1 = _mm_xor_si128($t1, t4);
        $t1 = _mm_xor_si128($t1, t2);
    }};
}

#[inline(always)]
unsafe fn key_round_odd(t1: __m128i, mut t3: __m128i) -> __m128i {
    let t2 = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1));
    let mut t4 = _mm_slli_si128::<4>(t3);
    t3 = _mm_xor_si128(t3, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t3 = _mm_xor_si128(t3, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t3 = _mm_xor_si128(t3, t4);
    _mm_xor_si128(t3, t2)
}

/// FIPS 197 §5.2 key expansion for AES-256 with AESKEYGENASSIST.
#[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
unsafe fn expand_key(key: &[u8; 32]) -> [__m128i; 15] {
    let mut rk = [_mm_setzero_si128(); 15];
    let mut t1 = _mm_loadu_si128(key.as_ptr() as *const __m128i);
    let mut t3 = _mm_loadu_si128(key.as_ptr().add(16) as *const __m128i);
    rk[0] = t1;
    rk[1] = t3;
    key_round!(t1, t3, 0x01);
    rk[2] = t1;
    t3 = key_round_odd(t1, t3);
    rk[3] = t3;
    key_round!(t1, t3, 0x02);
    rk[4] = t1;
    t3 = key_round_odd(t1, t3);
    rk[5] = t3;
    key_round!(t1, t3, 0x04);
    rk[6] = t1;
    t3 = key_round_odd(t1, t3);
    rk[7] = t3;
    key_round!(t1, t3, 0x08);
    rk[8] = t1;
    t3 = key_round_odd(t1, t3);
    rk[9] = t3;
    key_round!(t1, t3, 0x10);
    rk[10] = t1;
    t3 = key_round_odd(t1, t3);
    rk[11] = t3;
    key_round!(t1, t3, 0x20);
    rk[12] = t1;
    t3 = key_round_odd(t1, t3);
    rk[13] = t3;
    key_round!(t1, t3, 0x40);
    rk[14] = t1;
    rk
}

#[inline(always)]
unsafe fn encrypt1(rk: &[__m128i; 15], mut x: __m128i) -> __m128i {
    x = _mm_xor_si128(x, rk[0]);
    for k in &rk[1..14] {
        x = _mm_aesenc_si128(x, *k);
    }
    _mm_aesenclast_si128(x, rk[14])
}

/// Unreduced 256-bit carry-less product, accumulated into (lo, mid, hi).
#[inline(always)]
unsafe fn mul_acc(a: __m128i, b: __m128i, lo: &mut __m128i, mid: &mut __m128i, hi: &mut __m128i) {
    *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128::<0x00>(a, b));
    *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128::<0x11>(a, b));
    *mid = _mm_xor_si128(
        *mid,
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x01>(a, b),
            _mm_clmulepi64_si128::<0x10>(a, b),
        ),
    );
}

/// POLYVAL reduction of lo + mid*x^64 + hi*x^128 to a*b*x^-128 mod
/// x^128 + x^127 + x^126 + x^121 + 1 (RFC 8452 §3), two folds by the constant 0xc2...01.
#[inline(always)]
unsafe fn reduce(lo: __m128i, mid: __m128i, hi: __m128i) -> __m128i {
    let lo = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
    let hi = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
    let poly = _mm_set_epi64x(0xc200_0000_0000_0000u64 as i64, 1);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    _mm_xor_si128(hi, lo)
}

#[inline(always)]
unsafe fn dot(a: __m128i, b: __m128i) -> __m128i {
    let z = _mm_setzero_si128();
    let (mut lo, mut mid, mut hi) = (z, z, z);
    mul_acc(a, b, &mut lo, &mut mid, &mut hi);
    reduce(lo, mid, hi)
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

#[inline(always)]
unsafe fn store(p: *mut u8, v: __m128i) {
    _mm_storeu_si128(p as *mut __m128i, v)
}

impl Kernel {
    /// True when this CPU has what the kernel needs.
    pub fn available() -> bool {
        is_x86_feature_detected!("aes")
            && is_x86_feature_detected!("pclmulqdq")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1")
    }

    /// Set up key and nonce; returns the kernel (counter at inc32(J0)) and E(K, J0).
    /// The caller must have checked [`Kernel::available`].
    pub fn new(key: &[u8; 32], nonce: &[u8; 12]) -> (Kernel, [u8; 16]) {
        debug_assert!(Self::available());
        // SAFETY: the features were detected by the caller (`available`).
        unsafe { Self::new_impl(key, nonce) }
    }

    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1")]
    unsafe fn new_impl(key: &[u8; 32], nonce: &[u8; 12]) -> (Kernel, [u8; 16]) {
        let rk = expand_key(key);
        // H = E(K, 0^128), in the POLYVAL domain: mulX_POLYVAL(ByteReverse(H)) (RFC 8452 App. A).
        let h = bswap(encrypt1(&rk, _mm_setzero_si128()));
        let mut hv: u128 = core::mem::transmute::<__m128i, u128>(h);
        let carry = hv >> 127;
        hv = (hv << 1) ^ (carry * ((0xc2u128 << 120) | 1));
        let h1: __m128i = core::mem::transmute::<u128, __m128i>(hv);
        let mut hpow = [h1; 8];
        for i in 1..8 {
            hpow[i] = dot(hpow[i - 1], h1);
        }
        let mut nb = [0u8; 16];
        nb[..12].copy_from_slice(nonce);
        let nonce_block = load(nb.as_ptr());
        let j0 = _mm_insert_epi32::<3>(nonce_block, 1u32.swap_bytes() as i32);
        let mut mask = [0u8; 16];
        store(mask.as_mut_ptr(), encrypt1(&rk, j0));
        let vaes = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("vaes");
        let vclmul = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("vpclmulqdq");
        (
            Kernel {
                rk,
                hpow,
                acc: _mm_setzero_si128(),
                nonce_block,
                ctr: 2,
                vaes,
                vclmul,
            },
            mask,
        )
    }

    /// Turn off the 256-bit VAES and VPCLMULQDQ paths (tests use this to cover the 128-bit path).
    pub fn disable_vaes(&mut self) {
        self.vaes = false;
        self.vclmul = false;
    }

    /// GHASH `len` bytes at `data`; `len` must be a multiple of 16.
    ///
    /// # Safety
    /// `data` must be valid for reading `len` bytes.
    pub unsafe fn ghash(&mut self, data: *const u8, len: usize) {
        debug_assert!(len.is_multiple_of(16));
        let mut done = 0;
        if self.vclmul {
            done = self.ghash_vclmul(data, len);
        }
        self.ghash_impl(data.add(done), len - done)
    }

    /// Eight blocks per reduction on 256-bit lanes; returns the bytes done (a multiple of 128).
    #[target_feature(enable = "pclmulqdq,sse2,ssse3,avx2,vpclmulqdq")]
    unsafe fn ghash_vclmul(&mut self, mut p: *const u8, len: usize) -> usize {
        let h = &self.hpow;
        // Lane 0 of vector j holds block 2j (times H^(8-2j)), lane 1 block 2j+1 (H^(7-2j)).
        let hv = [
            _mm256_set_m128i(h[6], h[7]),
            _mm256_set_m128i(h[4], h[5]),
            _mm256_set_m128i(h[2], h[3]),
            _mm256_set_m128i(h[0], h[1]),
        ];
        let rev = _mm256_set_epi8(
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
            11, 12, 13, 14, 15,
        );
        let mut acc = self.acc;
        let blocks = len / 128;
        for _ in 0..blocks {
            let z = _mm256_setzero_si256();
            let (mut lo, mut mid, mut hi) = (z, z, z);
            for (j, hj) in hv.iter().enumerate() {
                let mut x =
                    _mm256_shuffle_epi8(_mm256_loadu_si256(p.add(32 * j) as *const __m256i), rev);
                if j == 0 {
                    x = _mm256_xor_si256(x, _mm256_set_m128i(_mm_setzero_si128(), acc));
                }
                lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128::<0x00>(x, *hj));
                hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128::<0x11>(x, *hj));
                mid = _mm256_xor_si256(
                    mid,
                    _mm256_xor_si256(
                        _mm256_clmulepi64_epi128::<0x01>(x, *hj),
                        _mm256_clmulepi64_epi128::<0x10>(x, *hj),
                    ),
                );
            }
            let fold = |v: __m256i| {
                _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
            };
            acc = reduce(fold(lo), fold(mid), fold(hi));
            p = p.add(128);
        }
        self.acc = acc;
        blocks * 128
    }

    #[target_feature(enable = "pclmulqdq,sse2,ssse3")]
    unsafe fn ghash_impl(&mut self, mut p: *const u8, len: usize) {
        let mut n = len / 16;
        let mut acc = self.acc;
        let h = &self.hpow;
        while n >= 8 {
            let z = _mm_setzero_si128();
            let (mut lo, mut mid, mut hi) = (z, z, z);
            mul_acc(
                _mm_xor_si128(acc, bswap(load(p))),
                h[7],
                &mut lo,
                &mut mid,
                &mut hi,
            );
            for i in 1..8 {
                mul_acc(
                    bswap(load(p.add(16 * i))),
                    h[7 - i],
                    &mut lo,
                    &mut mid,
                    &mut hi,
                );
            }
            acc = reduce(lo, mid, hi);
            p = p.add(128);
            n -= 8;
        }
        while n > 0 {
            acc = dot(_mm_xor_si128(acc, bswap(load(p))), h[0]);
            p = p.add(16);
            n -= 1;
        }
        self.acc = acc;
    }

    /// The GHASH value so far, in GCM byte order.
    pub fn ghash_value(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: SSSE3 was detected when the kernel was made.
        unsafe { self.ghash_value_impl(&mut out) };
        out
    }

    #[target_feature(enable = "sse2,ssse3")]
    unsafe fn ghash_value_impl(&self, out: &mut [u8; 16]) {
        store(out.as_mut_ptr(), bswap(self.acc));
    }

    /// The next keystream block (advances the counter by one).
    pub fn keystream_block(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: features detected when the kernel was made.
        unsafe { self.keystream_block_impl(&mut out) };
        out
    }

    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    unsafe fn keystream_block_impl(&mut self, out: &mut [u8; 16]) {
        let b = _mm_insert_epi32::<3>(self.nonce_block, self.ctr.swap_bytes() as i32);
        self.ctr = self.ctr.wrapping_add(1);
        store(out.as_mut_ptr(), encrypt1(&self.rk, b));
    }

    /// out = in XOR keystream for `len` bytes (a multiple of 16); `inp` may equal `out`.
    ///
    /// # Safety
    /// `inp` valid for reading and `out` for writing `len` bytes; they are the same or disjoint.
    pub unsafe fn ctr_xor(&mut self, inp: *const u8, out: *mut u8, len: usize) {
        debug_assert!(len.is_multiple_of(16));
        let mut done = 0;
        if self.vaes {
            done = self.ctr_xor_vaes(inp, out, len);
        }
        self.ctr_xor_aesni(inp.add(done), out.add(done), len - done);
    }

    #[target_feature(enable = "aes,sse2,ssse3,sse4.1")]
    unsafe fn ctr_xor_aesni(&mut self, inp: *const u8, out: *mut u8, len: usize) {
        let rk = &self.rk;
        let nb = self.nonce_block;
        let mut ctr = self.ctr;
        let mut off = 0;
        while off + 128 <= len {
            let mut s = [_mm_setzero_si128(); 8];
            for (i, b) in s.iter_mut().enumerate() {
                let c = ctr.wrapping_add(i as u32).swap_bytes() as i32;
                *b = _mm_xor_si128(_mm_insert_epi32::<3>(nb, c), rk[0]);
            }
            ctr = ctr.wrapping_add(8);
            for k in &rk[1..14] {
                for b in s.iter_mut() {
                    *b = _mm_aesenc_si128(*b, *k);
                }
            }
            for (i, b) in s.iter().enumerate() {
                let ks = _mm_aesenclast_si128(*b, rk[14]);
                let x = load(inp.add(off + 16 * i));
                store(out.add(off + 16 * i), _mm_xor_si128(x, ks));
            }
            off += 128;
        }
        while off < len {
            let b = _mm_insert_epi32::<3>(nb, ctr.swap_bytes() as i32);
            ctr = ctr.wrapping_add(1);
            let ks = encrypt1(rk, b);
            store(out.add(off), _mm_xor_si128(load(inp.add(off)), ks));
            off += 16;
        }
        self.ctr = ctr;
    }

    /// 16 blocks per round trip on 256-bit VAES lanes; returns the bytes done (a multiple of 256).
    #[target_feature(enable = "aes,avx2,vaes,sse4.1")]
    unsafe fn ctr_xor_vaes(&mut self, inp: *const u8, out: *mut u8, len: usize) -> usize {
        let mut rk2 = [_mm256_setzero_si256(); 15];
        for (d, s) in rk2.iter_mut().zip(self.rk.iter()) {
            *d = _mm256_broadcastsi128_si256(*s);
        }
        let nb = self.nonce_block;
        let mut ctr = self.ctr;
        let mut off = 0;
        while off + 256 <= len {
            let mut s = [_mm256_setzero_si256(); 8];
            for (i, b) in s.iter_mut().enumerate() {
                let c0 = ctr.wrapping_add(2 * i as u32).swap_bytes() as i32;
                let c1 = ctr.wrapping_add(2 * i as u32 + 1).swap_bytes() as i32;
                let lo = _mm_insert_epi32::<3>(nb, c0);
                let hi = _mm_insert_epi32::<3>(nb, c1);
                *b = _mm256_xor_si256(_mm256_set_m128i(hi, lo), rk2[0]);
            }
            ctr = ctr.wrapping_add(16);
            for k in &rk2[1..14] {
                for b in s.iter_mut() {
                    *b = _mm256_aesenc_epi128(*b, *k);
                }
            }
            for (i, b) in s.iter().enumerate() {
                let ks = _mm256_aesenclast_epi128(*b, rk2[14]);
                let x = _mm256_loadu_si256(inp.add(off + 32 * i) as *const __m256i);
                _mm256_storeu_si256(
                    out.add(off + 32 * i) as *mut __m256i,
                    _mm256_xor_si256(x, ks),
                );
            }
            off += 256;
        }
        self.ctr = ctr;
        off
    }
}
