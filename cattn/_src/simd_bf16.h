/*
 * bfloat16 storage primitives, included by instantiate_bf16.h after an
 * ISA's primitives (simd_*.h) for the instantiation whose K/V cache is
 * bfloat16 (T float).  bfloat16 is the top half of a float32, so widening
 * is a 16-bit shift: SUF(vload_h) widens VL values (exact), on every ISA.
 */
#ifndef CATTN_BF16_SCALAR
#define CATTN_BF16_SCALAR
/* bfloat16 (bits) -> float, exact */
static inline float cattn_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
/* float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN */
static inline uint16_t cattn_float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#endif

#if VL == 1
static inline V SUF(vload_h)(const uint16_t *p) { return (T)cattn_bf16_to_float(p[0]); }
#else
typedef uint16_t SUF(VH) __attribute__((vector_size(CATTN_VBYTES / 2), aligned(2)));
static inline V SUF(vload_h)(const uint16_t *p)
{
    /* zero-extend each 16-bit value into a 32-bit lane, shift it to the top */
    return (V)(__builtin_convertvector(*(const SUF(VH) *)p, VI) << 16);
}
#endif
