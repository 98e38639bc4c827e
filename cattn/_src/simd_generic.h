/*
 * Primitives of the baseline variant: vector extensions only, whatever the
 * compiler targets by default (SSE2 on x86-64, NEON on arm64).
 */
#include "simd_vecext.h"

#define CATTN_NREGS 16

/* max / min that give b where either is NaN, as x86's maxps(a, b) and
   minps(a, b) do */
static inline V SUF(vmax)(V a, V b) { return SUF(vsel)(VMASK(a > b), a, b); }
static inline V SUF(vmin)(V a, V b) { return SUF(vsel)(VMASK(a < b), a, b); }

/* sum of the lanes, as a fixed tree */
static inline T SUF(hsum)(V x)
{
    T b[VL];
    memcpy(b, &x, sizeof b);
#if VL >= 16
    for (int i = 0; i < 8; i++) b[i] += b[i + 8];
#endif
#if VL >= 8
    for (int i = 0; i < 4; i++) b[i] += b[i + 4];
#endif
#if VL >= 4
    return (b[0] + b[2]) + (b[1] + b[3]);
#else
    return b[0] + b[1];
#endif
}

/* VL float16 values widened to T (exact, in software) */
static inline V SUF(vload_h)(const uint16_t *p)
{
    V r;
    for (int v = 0; v < VL; v++) r[v] = (T)cattn_half_to_float(p[v]);
    return r;
}

/* VL int8 values widened to T (exact): a vector-extension conversion */
typedef int8_t SUF(VB) __attribute__((vector_size(VL)));
static inline V SUF(vload_i8)(const int8_t *p)
{
    SUF(VB) b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, V);
}

/* the four sums of a, b, c, d into o[0..3] */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
    o[0] = SUF(hsum)(a); o[1] = SUF(hsum)(b); o[2] = SUF(hsum)(c); o[3] = SUF(hsum)(d);
}
