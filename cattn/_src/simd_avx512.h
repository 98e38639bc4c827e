/*
 * Primitives of the Skylake-X variant: AVX-512 (F, VL, BW, DQ) with FMA and
 * F16C, 64-byte vectors and 32 vector registers (the tile kernels use
 * 8 x 2 register blocks when CATTN_NREGS >= 32).  Compiled inside a
 * target("avx512f,...") region (flash.c).
 */
#include "simd_vecext.h"

#define CATTN_NREGS 32

#if CATTN_F64
static inline V SUF(vmax)(V a, V b) { return (V)_mm512_max_pd((__m512d)a, (__m512d)b); }
static inline V SUF(vmin)(V a, V b) { return (V)_mm512_min_pd((__m512d)a, (__m512d)b); }
static inline T SUF(hsum)(V x) { return _mm512_reduce_add_pd((__m512d)x); }
static inline V SUF(vload_h)(const uint16_t *p)
{
    return (V)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
}
/* vexp's steps (simd_math.h): x rounded to the nearest integer, and
   p 2^n where x is not below lo (NaN included), else 0 */
#define CATTN_HAVE_SCALEF 1
static inline V SUF(vrint)(V x)
{
    return (V)_mm512_roundscale_pd((__m512d)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline V SUF(vexp2n)(V p, V n, V x, T lo)
{
    const __mmask8 keep = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(lo), _CMP_NLT_UQ);
    return (V)_mm512_maskz_scalef_pd(keep, (__m512d)p, (__m512d)n);
}
static inline V SUF(vload_i8)(const int8_t *p)
{
    return (V)_mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
/* the four sums of a, b, c, d into o[0..3]: halves added, then the
   Haswell tree (hadd + a 128-bit swap) -- 10 instructions where four
   hsums take 28 */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
#define CATTN_HALF(x) _mm256_add_pd(_mm512_castpd512_pd256((__m512d)(x)), \
                                    _mm512_extractf64x4_pd((__m512d)(x), 1))
    const __m256d ab = _mm256_hadd_pd(CATTN_HALF(a), CATTN_HALF(b));
    const __m256d cd = _mm256_hadd_pd(CATTN_HALF(c), CATTN_HALF(d));
#undef CATTN_HALF
    _mm256_storeu_pd(o, _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20),
                                      _mm256_permute2f128_pd(ab, cd, 0x31)));
}
#else
static inline V SUF(vmax)(V a, V b) { return (V)_mm512_max_ps((__m512)a, (__m512)b); }
static inline V SUF(vmin)(V a, V b) { return (V)_mm512_min_ps((__m512)a, (__m512)b); }
static inline T SUF(hsum)(V x) { return _mm512_reduce_add_ps((__m512)x); }
/* the four sums of a, b, c, d into o[0..3]: 512 -> 256 bits, then
   hadd(hadd(a, b), hadd(c, d)) and the two 128-bit halves added -- 13
   instructions where four hsums take 32 */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
#define CATTN_HALF(x) _mm256_add_ps(_mm512_castps512_ps256((__m512)(x)), \
        _mm256_castpd_ps(_mm512_extractf64x4_pd((__m512d)(x), 1)))
    const __m256 ab = _mm256_hadd_ps(CATTN_HALF(a), CATTN_HALF(b));
    const __m256 cd = _mm256_hadd_ps(CATTN_HALF(c), CATTN_HALF(d));
#undef CATTN_HALF
    const __m256 r = _mm256_hadd_ps(ab, cd);
    _mm_storeu_ps(o, _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1)));
}
static inline V SUF(vload_h)(const uint16_t *p)
{
    return (V)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
/* vexp's steps (simd_math.h): x rounded to the nearest integer, and
   p 2^n where x is not below lo (NaN included), else 0 */
#define CATTN_HAVE_SCALEF 1
static inline V SUF(vrint)(V x)
{
    return (V)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline V SUF(vexp2n)(V p, V n, V x, T lo)
{
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(lo), _CMP_NLT_UQ);
    return (V)_mm512_maskz_scalef_ps(keep, (__m512)p, (__m512)n);
}
/* dst[d][r] = src[r][d] for a 16 x 16 block of 32-bit values (row r at
   src + r rs bytes, row d at dst + d ld words), times s as floats when
   scale (a constant where inlined): Q^T panels (pack_q) and bfloat16 query
   pairs (pack_q_dp) in 64 shuffles, not 256 scalar stores a column apart */
#define CATTN_HAVE_T32 1
static inline void SUF(t32_16)(const char *src, int64_t rs, uint32_t *dst, int64_t ld, float s,
                               const int scale)
{
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(src + i * rs);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8)
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
    for (int d = 0; d < 16; d++) {
        if (scale) r[d] = _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(r[d]), _mm512_set1_ps(s)));
        _mm512_storeu_si512(dst + d * ld, r[d]);
    }
}
/* 16 int8 -> float: vpmovsxbd + vcvtdq2ps */
static inline V SUF(vload_i8)(const int8_t *p)
{
    return (V)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#endif
