/*
 * bfloat16 storage primitives, included by instantiate_bf16.h after an
 * ISA's primitives (simd_*.h) for the instantiation whose K/V cache is
 * bfloat16 (T float).  bfloat16 is the top half of a float32, so widening
 * is a 16-bit shift: SUF(vload_h) widens VL values (exact), on every ISA.
 */
/* the scalar conversions (cattn_bf16_to_float, cattn_float_to_bf16) are
   flash.c's */

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
