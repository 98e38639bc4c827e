/*
 * Primitives of the Haswell variant: AVX2 + FMA + F16C, 32-byte vectors.
 * Compiled inside a target("avx2,fma,f16c") region (flash.c).
 */
#include "simd_vecext.h"

#define CATTN_NREGS 16

#if CATTN_F64
static inline V SUF(vmax)(V a, V b) { return (V)_mm256_max_pd((__m256d)a, (__m256d)b); }
static inline V SUF(vmin)(V a, V b) { return (V)_mm256_min_pd((__m256d)a, (__m256d)b); }
static inline T SUF(hsum)(V x)
{
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128((__m256d)x), _mm256_extractf128_pd((__m256d)x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
static inline V SUF(vload_h)(const uint16_t *p)
{
    return (V)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)));
}
/* the four sums of a, b, c, d into o[0..3] (hadd, a 128-bit swap) */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
    const __m256d ab = _mm256_hadd_pd((__m256d)a, (__m256d)b);
    const __m256d cd = _mm256_hadd_pd((__m256d)c, (__m256d)d);
    _mm256_storeu_pd(o, _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20),
                                      _mm256_permute2f128_pd(ab, cd, 0x31)));
}
/* 4 int8 -> double: vpmovsxbd + vcvtdq2pd */
static inline V SUF(vload_i8)(const int8_t *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return (V)_mm256_cvtepi32_pd(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(w)));
}
#else
/* maxps(a, b) / minps(a, b): b where either is NaN, one instruction where
   a select is three */
static inline V SUF(vmax)(V a, V b) { return (V)_mm256_max_ps((__m256)a, (__m256)b); }
static inline V SUF(vmin)(V a, V b) { return (V)_mm256_min_ps((__m256)a, (__m256)b); }
/* a tree of shuffles: a store and scalar reloads would stall on
   store-to-load forwarding */
static inline T SUF(hsum)(V x)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
static inline V SUF(vload_h)(const uint16_t *p)
{
    return (V)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
/* the four sums of a, b, c, d into o[0..3]: hadd(hadd(a, b), hadd(c, d))
   and its two 128-bit halves added */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
    const __m256 r = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a, (__m256)b),
                                    _mm256_hadd_ps((__m256)c, (__m256)d));
    _mm_storeu_ps(o, _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1)));
}
/* 8 int8 -> float: vpmovsxbd + vcvtdq2ps */
static inline V SUF(vload_i8)(const int8_t *p)
{
    return (V)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#endif
