/*
 * Vector math written once on top of an ISA's primitives (simd_*.h):
 * exp, tanh, dot products, axpy, float16 row widening.  Included once per
 * instantiation, after the primitives.
 */
#define vload SUF(vload)
#define vstore SUF(vstore)
#define vset1 SUF(vset1)
#define vsel SUF(vsel)
#define vbits SUF(vbits)
#define vfrom SUF(vfrom)
#define vmax SUF(vmax)
#define vmin SUF(vmin)
#define hsum SUF(hsum)
#define hsum4 SUF(hsum4)
#define vload_h SUF(vload_h)
#define vload_i8 SUF(vload_i8)
#define vstore_bf16 SUF(vstore_bf16)

/* max(lo, min(hi, x)), a NaN x kept (x second in both: see vmax/vmin) */
static inline V SUF(vclamp)(V x, T lo, T hi) { return vmax(vset1(lo), vmin(vset1(hi), x)); }
#define vclamp SUF(vclamp)

/*
 * exp(x) for the softmax: Cody-Waite range reduction x = n ln2 + r,
 * |r| <= ln2/2, a polynomial for exp(r), and 2^n built in the exponent bits.
 * The rounding of x/ln2 uses the 1.5*2^mantissa "magic number" add, which
 * needs neither a float->int conversion nor -ffast-math.  Results below the
 * smallest normal number are flushed to 0 (exp(-inf) = 0); NaN stays NaN.
 * Max error: ~1 ulp (float), ~2 ulp (double).  Where the ISA has
 * VRNDSCALE/VSCALEF (AVX-512: CATTN_HAVE_SCALEF), n is rounded and 2^n
 * applied by them, the same r and polynomial: 15 instructions for 20
 * ((4,8,512,512,64) float32, 1 thread: 23.40 -> 23.00 ms;
 * (1,8,128,128,64): 0.365 -> 0.361 ms; medians of 3, alternating).
 */
static inline V SUF(vexp)(V x)
{
#if CATTN_F64
    const T hi = 709.0, lo = -708.3, log2e = 1.4426950408889634,
            magic = 6755399441055744.0, /* 1.5 * 2^52 */
            c1 = 6.93147180369123816490e-01, c2 = 1.90821492927058770002e-10;
#else
    const T hi = 88.3f, lo = -87.3f, log2e = 1.44269504088896341f,
            magic = 12582912.0f, /* 1.5 * 2^23 */
            c1 = 0.693359375f, c2 = -2.12194440e-4f;
#endif
#ifdef CATTN_HAVE_SCALEF
    /* n rounded by VRNDSCALE and 2^n applied by VSCALEF, zero below lo
       (vexp2n, masked on the input).  x is clamped to [lo, hi] first, as
       below: -inf would give r = -inf + inf, which is NaN where the mask
       drops it, but raises FE_INVALID (a SIGFPE under FP traps) */
    const V xin = x;
    x = vclamp(x, lo, hi);
    V n = SUF(vrint)(x * log2e);
    (void)magic;
#else
    VI under = VMASK(x < lo);
    x = vclamp(x, lo, hi);
    V t = x * log2e + magic;
    V n = t - magic;
#endif
#if CATTN_F64
    V r = x - n * c1;
    r = r - n * c2;
    /* Taylor series to degree 13: truncation error < 1e-17 on |r| <= ln2/2 */
    V p = vset1(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
#ifndef CATTN_HAVE_SCALEF
    VI e = ((vbits(t) - vbits(vset1(magic))) + 1023) << 52;
#endif
#else
    V r = x - n * c1;
    r = r - n * c2;
    /* the classic single-precision minimax coefficients (Cephes expf) */
    V p = vset1(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
#ifndef CATTN_HAVE_SCALEF
    VI e = ((vbits(t) - vbits(vset1(magic))) + 127) << 23;
#endif
#endif
#ifdef CATTN_HAVE_SCALEF
    return SUF(vexp2n)(p, n, xin, lo);
#else
    V res = p * vfrom(e);
    return vfrom(vbits(res) & ~under);
#endif
}
#define vexp SUF(vexp)

/* tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); below |x| = 1/16,
   where 1 - e cancels, the odd Taylor series (relative error < 1 ulp). */
static inline V SUF(vtanh)(V x)
{
    const VI sign = vbits(vset1((T)-0.0));
    V ax = vfrom(vbits(x) & ~sign);
    V e = vexp(ax * (T)-2.0);
    V t = ((T)1.0 - e) / ((T)1.0 + e);
    V x2 = x * x;
    /* x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 - 1382x^11/155925 */
    V p = vset1((T)(-1382.0 / 155925.0));
    p = p * x2 + (T)(62.0 / 2835.0);
    p = p * x2 + (T)(-17.0 / 315.0);
    p = p * x2 + (T)(2.0 / 15.0);
    p = p * x2 + (T)(-1.0 / 3.0);
    V small = x + x * (x2 * p);
    t = vfrom(vbits(t) | (vbits(x) & sign));
    return vsel(VMASK(ax < (T)0.0625), small, t);
}
#define vtanh SUF(vtanh)

/* min of two vectors (a NaN in `a` keeps b, as vmax) */
static inline V SUF(vmin)(V a, V b) { return vsel(VMASK(a < b), a, b); }
#define vmin SUF(vmin)

static inline T SUF(tanh1)(T x) { V v = vset1(x); return VLANE(vtanh(v), 0); }
static inline T SUF(exp1)(T x) { V v = vset1(x); return VLANE(vexp(v), 0); }

static inline int64_t SUF(imax)(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t SUF(imin)(int64_t a, int64_t b) { return a < b ? a : b; }
#define imax SUF(imax)
#define imin SUF(imin)

static inline T SUF(half1)(uint16_t h) { return (T)cattn_half_to_float(h); }

/* rows of a float16 K or V tile widened into scratch (exact) */
static void SUF(half_rows)(const uint16_t *src, int64_t rs, int64_t n_rows, int64_t n,
                           T *dst, int64_t ld)
{
    for (int64_t r = 0; r < n_rows; r++) {
        const uint16_t *sr = src + r * rs;
        T *dr = dst + r * ld;
        int64_t c = 0;
        for (; c + VL <= n; c += VL) vstore(dr + c, vload_h(sr + c));
        for (; c < n; c++) dr[c] = SUF(half1)(sr[c]);
    }
}

/* sum_d a[d] b[d] in four accumulator chains; b of type BT is read VL
   values at a time by LOADB and one at a time through CONV */
#define CATTN_DEFINE_DOT(name, BT, LOADB, CONV)                                   \
static inline T SUF(name)(const T *a, const BT *b, int64_t n)                    \
{                                                                                \
    V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};                                    \
    int64_t d = 0;                                                               \
    for (; d + 4 * VL <= n; d += 4 * VL) {                                       \
        c0 += vload(a + d) * LOADB(b + d);                                       \
        c1 += vload(a + d + VL) * LOADB(b + d + VL);                             \
        c2 += vload(a + d + 2 * VL) * LOADB(b + d + 2 * VL);                     \
        c3 += vload(a + d + 3 * VL) * LOADB(b + d + 3 * VL);                     \
    }                                                                            \
    for (; d + VL <= n; d += VL) c0 += vload(a + d) * LOADB(b + d);              \
    T s = hsum((c0 + c1) + (c2 + c3));                                           \
    for (; d < n; d++) s += a[d] * CONV(b[d]);                                   \
    return s;                                                                    \
}
CATTN_DEFINE_DOT(dot, T, vload, (T))
CATTN_DEFINE_DOT(dot_h, uint16_t, vload_h, SUF(half1))
#undef CATTN_DEFINE_DOT

/* y += alpha x, for a float32/64 cache: one pass over y per key streams V
   rows whole (measured faster from DRAM than the register-blocked pass,
   which reads a row in two halves when Dv > 8 vectors) */
static inline void SUF(axpy)(T alpha, const T *x, T *y, int64_t n)
{
    const V a = vset1(alpha);
    int64_t d = 0;
    for (; d + 2 * VL <= n; d += 2 * VL) {
        vstore(y + d, vload(y + d) + a * vload(x + d));
        vstore(y + d + VL, vload(y + d + VL) + a * vload(x + d + VL));
    }
    for (; d + VL <= n; d += VL) vstore(y + d, vload(y + d) + a * vload(x + d));
    for (; d < n; d++) y[d] += alpha * x[d];
}
