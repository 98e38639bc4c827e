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
static inline V SUF(vload_i8)(const int8_t *p)
{
    return (V)_mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#else
static inline V SUF(vmax)(V a, V b) { return (V)_mm512_max_ps((__m512)a, (__m512)b); }
static inline V SUF(vmin)(V a, V b) { return (V)_mm512_min_ps((__m512)a, (__m512)b); }
static inline T SUF(hsum)(V x) { return _mm512_reduce_add_ps((__m512)x); }
static inline V SUF(vload_h)(const uint16_t *p)
{
    return (V)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
/* 16 int8 -> float: vpmovsxbd + vcvtdq2ps */
static inline V SUF(vload_i8)(const int8_t *p)
{
    return (V)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#endif
