/*
 * Primitives of the Cooper Lake variant: the Skylake-X set (simd_avx512.h)
 * plus AVX512_BF16's VDPBF16PS (Cooper Lake, Sapphire Rapids, Zen 4 and
 * later).  Compiled inside a target("avx512bf16,...") region (flash.c) and
 * used only by the bfloat16-cache kernels (instantiate_bf16.h), T float.
 *
 * VDPBF16PS multiplies bfloat16 *pairs*: lane i of the float32 accumulator
 * gains a[2i] b[2i] + a[2i+1] b[2i+1], each product exact in float32.  The
 * operands are therefore packed two values of the reduction axis to a
 * 32-bit lane (a "pair vector", VB): Q^T in pairs of D, P^T and V in pairs
 * of keys (flash_bf16_impl.h).
 */
#include "simd_avx512.h"

#define CATTN_DPBF16 1

typedef __m512i SUF(VB);

/* acc + sum over the pair of each lane of a * b */
static inline V SUF(vdp)(V acc, SUF(VB) a, SUF(VB) b)
{
    return (V)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
}
static inline SUF(VB) SUF(vb_load)(const uint32_t *p) { return _mm512_loadu_si512(p); }
static inline void SUF(vb_store)(uint32_t *p, SUF(VB) x) { _mm512_storeu_si512(p, x); }
/* one pair (two bfloat16, the lower one first) in every lane */
static inline SUF(VB) SUF(vb_set1)(uint32_t pair) { return _mm512_set1_epi32((int)pair); }
/* lane i: (lo[i], hi[i]) rounded to bfloat16 (nearest even) */
static inline SUF(VB) SUF(vb_pairs)(V lo, V hi)
{
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10,
                                         25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                                         19, 3, 18, 2, 17, 1, 16, 0);
    __m512i both = (__m512i)_mm512_cvtne2ps_pbh((__m512)hi, (__m512)lo);  /* lo 0-15, hi 16-31 */
    return _mm512_permutexvar_epi16(idx, both);
}
/* n <= 32 bfloat16 of rows r0 and r1 (columns c .. c + n) interleaved:
   out0 lane i = (r0[i], r1[i]) for i < 16, out1 for 16 <= i < 32; columns
   past n are zero.  r1 == NULL: a zero row. */
static inline void SUF(vb_rows)(const uint16_t *r0, const uint16_t *r1, int64_t n,
                                SUF(VB) *out0, SUF(VB) *out1)
{
    const __mmask32 m = n >= 32 ? (__mmask32)0xffffffffu : (((__mmask32)1 << n) - 1);
    __m512i a = _mm512_maskz_loadu_epi16(m, r0);
    __m512i b = r1 ? _mm512_maskz_loadu_epi16(m, r1) : _mm512_setzero_si512();
    const __m512i i0 = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10,
                                        41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36, 4,
                                        35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i i1 = _mm512_add_epi16(i0, _mm512_set1_epi16(16));
    *out0 = _mm512_permutex2var_epi16(a, i0, b);
    *out1 = _mm512_permutex2var_epi16(a, i1, b);
}
/* exp(x) for weights that are rounded to bfloat16 (P of P.V): 2^n 2^f with
   n = round(x log2 e), |f| <= 1/2, a degree-5 near-minimax polynomial for
   2^f and VSCALEFPS for 2^n.  Relative error <= 4e-6 (the rounding of
   x log2 e; the polynomial's is 7.5e-8), against bfloat16's 2^-9; 11
   instructions where vexp (1 ulp, for float32 results) takes about 20.
   Like vexp: 0 below -87.3 (and for -inf), exp(88.3) above 88.3 (and for
   +inf), NaN stays NaN.  At (1,8,4096,4096,64), 1 thread: 205.6 -> 196.5
   ms (medians of 3, alternating). */
static inline V SUF(vexp_p)(V x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);
    /* clamped on both sides first: -inf - (-inf) would raise FE_INVALID */
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-87.3f),
                                    _mm512_min_ps(_mm512_set1_ps(88.3f), (__m512)x));
    const __m512 y = _mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(y, n);
    __m512 p = _mm512_set1_ps(1.32765e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.67554e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550713e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402212e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314697e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.00000007f));
    return (V)_mm512_maskz_scalef_ps(keep, p, n);
}

/* the first n (< VL) lanes: load (others zero) and store */
static inline V SUF(vload_n)(const T *p, int64_t n)
{
    return (V)_mm512_maskz_loadu_ps((__mmask16)(((unsigned)1 << n) - 1), p);
}
static inline void SUF(vstore_n)(T *p, V x, int64_t n)
{
    _mm512_mask_storeu_ps(p, (__mmask16)(((unsigned)1 << n) - 1), (__m512)x);
}
