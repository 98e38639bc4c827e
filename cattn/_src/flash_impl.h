/*
 * One instantiation of the fused attention block kernel.
 *
 * Included by flash.c once per (element type, ISA) with these macros set:
 *   T           float or double
 *   CATTN_F64   0 or 1
 *   SUF(name)   appends the variant suffix (e.g. name##_f32_haswell)
 *   CATTN_VBYTES  vector width in bytes: 32 (baseline, Haswell) or 64 (AVX-512)
 * The ISA itself comes from the surrounding `#pragma GCC target` region, so
 * the same source becomes SSE2 code in the baseline variant and AVX2+FMA
 * code in the Haswell one.
 *
 * Vectors are 32 bytes (8 floats / 4 doubles) or 64 with AVX-512; on a
 * baseline x86-64 target the compiler splits a 32-byte vector into two SSE
 * registers.
 */

#ifndef CATTN_VBYTES
#error "define CATTN_VBYTES (vector width in bytes: 32 or 64) before including flash_impl.h"
#endif
#if CATTN_PORTABLE
/* Standard C only (MSVC has no vector extensions): one lane, the same code.
   Lane masks are unsigned all-ones/zero words, as a vector comparison gives. */
typedef T SUF(V);
typedef T SUF(VU);
#if CATTN_F64
typedef uint64_t SUF(VI);
#else
typedef uint32_t SUF(VI);
#endif
#define VL 1
#elif CATTN_F64
typedef double SUF(V) __attribute__((vector_size(CATTN_VBYTES)));
typedef double SUF(VU) __attribute__((vector_size(CATTN_VBYTES), aligned(8)));
typedef int64_t SUF(VI) __attribute__((vector_size(CATTN_VBYTES)));
#define VL (CATTN_VBYTES / 8)
#else
typedef float SUF(V) __attribute__((vector_size(CATTN_VBYTES)));
typedef float SUF(VU) __attribute__((vector_size(CATTN_VBYTES), aligned(4)));
typedef int32_t SUF(VI) __attribute__((vector_size(CATTN_VBYTES)));
#define VL (CATTN_VBYTES / 4)
#endif
#define V SUF(V)
#define VU SUF(VU)
#define VI SUF(VI)
/* query columns per micro-tile: two vectors */
#define NQ (2 * VL)
/* key rows per S micro-tile, query rows per P.V micro-tile */
#define MR_S 6
#define MR_O 4

#if CATTN_PORTABLE
static inline V SUF(vload)(const T *p) { return *p; }
static inline void SUF(vstore)(T *p, V x) { *p = x; }
static inline V SUF(vset1)(T x) { return x; }
/* bits of a lane and back (memcpy: the standard's type pun) */
static inline VI SUF(vbits)(V x) { VI i; memcpy(&i, &x, sizeof i); return i; }
static inline V SUF(vfrom)(VI i) { V x; memcpy(&x, &i, sizeof x); return x; }
#define VMASK(c) ((VI)0 - (VI)(c))
#define VLANE(x, v) (x)
static inline V SUF(vsel)(VI m, V a, V b) { return m ? a : b; }
#else
static inline V SUF(vload)(const T *p) { return (V)(*(const VU *)p); }
static inline void SUF(vstore)(T *p, V x) { *(VU *)p = (VU)x; }
static inline V SUF(vset1)(T x)
{
    /* An explicit initializer compiles to one broadcast; `zero + x` would
       turn -0.0 into +0.0 and a lane loop compiles to a chain of inserts. */
#if CATTN_VBYTES / (CATTN_F64 ? 8 : 4) == 4
    return (V){x, x, x, x};
#elif CATTN_VBYTES / (CATTN_F64 ? 8 : 4) == 8
    return (V){x, x, x, x, x, x, x, x};
#else
    return (V){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#endif
}
static inline VI SUF(vbits)(V x) { return (VI)x; }
static inline V SUF(vfrom)(VI i) { return (V)i; }
/* a comparison's result as a lane mask, and lane v of a vector */
#define VMASK(c) (c)
#define VLANE(x, v) ((x)[v])
/* bitwise select: m ? a : b, m a lane mask from a vector comparison */
static inline V SUF(vsel)(VI m, V a, V b) { return (V)((m & (VI)a) | (~m & (VI)b)); }
#endif
/* max that ignores a NaN in `a` (the new value): keeps b then -- exactly
   x86's maxps(a, b), which is one instruction where the select is three */
#if defined(CATTN_AVX2) && CATTN_VBYTES == 64 && !CATTN_F64
static inline V SUF(vmax)(V a, V b) { return (V)_mm512_max_ps((__m512)a, (__m512)b); }
#elif defined(CATTN_AVX2) && CATTN_VBYTES == 64
static inline V SUF(vmax)(V a, V b) { return (V)_mm512_max_pd((__m512d)a, (__m512d)b); }
#elif defined(CATTN_AVX2) && !CATTN_F64
static inline V SUF(vmax)(V a, V b) { return (V)_mm256_max_ps((__m256)a, (__m256)b); }
#elif defined(CATTN_AVX2)
static inline V SUF(vmax)(V a, V b) { return (V)_mm256_max_pd((__m256d)a, (__m256d)b); }
#else
static inline V SUF(vmax)(V a, V b) { return SUF(vsel)(VMASK(a > b), a, b); }
#endif
/* max(lo, min(hi, x)), a NaN x kept: x86's minps/maxps with x second */
#if defined(CATTN_AVX2) && CATTN_VBYTES == 64 && !CATTN_F64
static inline V SUF(vclamp)(V x, T lo, T hi)
{ return (V)_mm512_max_ps(_mm512_set1_ps(lo), _mm512_min_ps(_mm512_set1_ps(hi), (__m512)x)); }
#elif defined(CATTN_AVX2) && CATTN_VBYTES == 64
static inline V SUF(vclamp)(V x, T lo, T hi)
{ return (V)_mm512_max_pd(_mm512_set1_pd(lo), _mm512_min_pd(_mm512_set1_pd(hi), (__m512d)x)); }
#elif defined(CATTN_AVX2) && !CATTN_F64
static inline V SUF(vclamp)(V x, T lo, T hi)
{ return (V)_mm256_max_ps(_mm256_set1_ps(lo), _mm256_min_ps(_mm256_set1_ps(hi), (__m256)x)); }
#elif defined(CATTN_AVX2)
static inline V SUF(vclamp)(V x, T lo, T hi)
{ return (V)_mm256_max_pd(_mm256_set1_pd(lo), _mm256_min_pd(_mm256_set1_pd(hi), (__m256d)x)); }
#else
static inline V SUF(vclamp)(V x, T lo, T hi)
{
    x = SUF(vsel)(VMASK(x > hi), SUF(vset1)(hi), x);
    return SUF(vsel)(VMASK(x < lo), SUF(vset1)(lo), x);
}
#endif
#define vbits SUF(vbits)
#define vfrom SUF(vfrom)

#define vload SUF(vload)
#define vstore SUF(vstore)
#define vset1 SUF(vset1)
#define vsel SUF(vsel)
#define vmax SUF(vmax)

/*
 * exp(x) for the softmax: Cody-Waite range reduction x = n ln2 + r,
 * |r| <= ln2/2, a polynomial for exp(r), and 2^n built in the exponent bits.
 * The rounding of x/ln2 uses the 1.5*2^mantissa "magic number" add, which
 * needs neither a float->int conversion nor -ffast-math.  Results below the
 * smallest normal number are flushed to 0 (exp(-inf) = 0); NaN stays NaN.
 * Max error: ~1 ulp (float), ~2 ulp (double).
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
    VI under = VMASK(x < lo);
    x = SUF(vclamp)(x, lo, hi);
    V t = x * log2e + magic;
    V n = t - magic;
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
    VI e = ((vbits(t) - vbits(vset1(magic))) + 1023) << 52;
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
    VI e = ((vbits(t) - vbits(vset1(magic))) + 127) << 23;
#endif
    V res = p * vfrom(e);
    return vfrom(vbits(res) & ~under);
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

static inline T SUF(tanh1)(T x) { V v = vset1(x); return VLANE(vtanh(v), 0); }

static inline int64_t SUF(imax)(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t SUF(imin)(int64_t a, int64_t b) { return a < b ? a : b; }
#define imax SUF(imax)
#define imin SUF(imin)

/* float16 (bits) -> T, exact: rows of a float16 K or V tile into scratch */
static inline T SUF(half1)(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (ex == 0) {
        if (man == 0) bits = sign;
        else {                       /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (ex == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((ex + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return (T)f;
}

static void SUF(half_rows)(const uint16_t *src, int64_t rs, int64_t n_rows, int64_t n,
                           T *dst, int64_t ld)
{
    for (int64_t r = 0; r < n_rows; r++) {
        const uint16_t *sr = src + r * rs;
        T *dr = dst + r * ld;
        int64_t c = 0;
#if defined(CATTN_HAVE_F16C) && !CATTN_F64
        for (; c + 8 <= n; c += 8)
            _mm256_storeu_ps(dr + c, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + c))));
#endif
        for (; c < n; c++) dr[c] = SUF(half1)(sr[c]);
    }
}

/* ---------------------------------------------------------------------- */
/* S^T[0:nk, 0:nqp] = K[0:nk] . Q^T; Q^T is packed panel by panel (NQ  */
/* queries: a contiguous D x NQ block), S^T has leading dimension ld.     */
/* ---------------------------------------------------------------------- */
static void SUF(tile_scores_dot)(const T *K, int64_t k_rs, int64_t nk,
                                 const T *QT, int64_t ld, int64_t nqp,
                                 int64_t D, T *ST)
{
    int64_t j = 0;
#if CATTN_VBYTES == 64
    /* AVX-512: 8 key rows x 2 vectors, sixteen accumulators of 32 registers */
    for (; j + 8 <= nk; j += 8) {
        const T *k0 = K + j * k_rs;
        for (int64_t i = 0; i < nqp; i += NQ) {
            V c[8][2];
            for (int r = 0; r < 8; r++) c[r][0] = c[r][1] = vset1(0);
            const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
            for (int64_t d = 0; d < D; d++, qp += NQ) {
                const V b0 = vload(qp), b1 = vload(qp + VL);
                for (int r = 0; r < 8; r++) {
                    const V a = vset1(k0[r * k_rs + d]);
                    c[r][0] += a * b0;
                    c[r][1] += a * b1;
                }
            }
            for (int r = 0; r < 8; r++) {
                vstore(ST + (j + r) * ld + i, c[r][0]);
                vstore(ST + (j + r) * ld + i + VL, c[r][1]);
            }
        }
    }
#endif
    for (; j < nk; j += MR_S) {
        const int64_t mr = imin(MR_S, nk - j);
        const T *k0 = K + (j + 0) * k_rs;
        if (mr == MR_S) {
            const T *k1 = k0 + k_rs, *k2 = k1 + k_rs, *k3 = k2 + k_rs,
                    *k4 = k3 + k_rs, *k5 = k4 + k_rs;
            for (int64_t i = 0; i < nqp; i += NQ) {
                V c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0},
                  c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
                const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
                for (int64_t d = 0; d < D; d++, qp += NQ) {
                    V b0 = vload(qp), b1 = vload(qp + VL);
                    V a;
                    a = vset1(k0[d]); c00 += a * b0; c01 += a * b1;
                    a = vset1(k1[d]); c10 += a * b0; c11 += a * b1;
                    a = vset1(k2[d]); c20 += a * b0; c21 += a * b1;
                    a = vset1(k3[d]); c30 += a * b0; c31 += a * b1;
                    a = vset1(k4[d]); c40 += a * b0; c41 += a * b1;
                    a = vset1(k5[d]); c50 += a * b0; c51 += a * b1;
                }
                T *s = ST + j * ld + i;
                vstore(s, c00); vstore(s + VL, c01); s += ld;
                vstore(s, c10); vstore(s + VL, c11); s += ld;
                vstore(s, c20); vstore(s + VL, c21); s += ld;
                vstore(s, c30); vstore(s + VL, c31); s += ld;
                vstore(s, c40); vstore(s + VL, c41); s += ld;
                vstore(s, c50); vstore(s + VL, c51);
            }
        } else {
            for (int64_t r = 0; r < mr; r++) {
                const T *kr = k0 + r * k_rs;
                for (int64_t i = 0; i < nqp; i += NQ) {
                    V c0 = {0}, c1 = {0};
                    const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
                    for (int64_t d = 0; d < D; d++, qp += NQ) {
                        V a = vset1(kr[d]);
                        c0 += a * vload(qp); c1 += a * vload(qp + VL);
                    }
                    vstore(ST + (j + r) * ld + i, c0);
                    vstore(ST + (j + r) * ld + i + VL, c1);
                }
            }
        }
    }
}

/* additive model: S^T[j, i] = sum_d w_d tanh(Q^T[d, i] + K[j, d]) */
static void SUF(tile_scores_additive)(const T *K, int64_t k_rs, int64_t nk,
                                      const T *QT, int64_t ld, int64_t nqp,
                                      int64_t D, const T *w, T *ST)
{
    for (int64_t j = 0; j < nk; j++) {
        const T *kr = K + j * k_rs;
        for (int64_t i = 0; i < nqp; i += NQ) {
            V c0 = {0}, c1 = {0};
            const T *qp = QT + i * D;   /* panel i/NQ starts at (i/NQ)*D*NQ */
            for (int64_t d = 0; d < D; d++, qp += NQ) {
                V a = vset1(kr[d]), wd = vset1(w[d]);
                c0 += wd * vtanh(vload(qp) + a);
                c1 += wd * vtanh(vload(qp + VL) + a);
            }
            vstore(ST + j * ld + i, c0);
            vstore(ST + j * ld + i + VL, c1);
        }
    }
}

/* ---------------------------------------------------------------------- */
/* O[0:nqp, 0:Dv] += P[0:nqp, ja:jb] . V[ja:jb], P stored transposed.      */
/* O has leading dimension ldo; P^T has ld.                                */
/* ---------------------------------------------------------------------- */
static void SUF(tile_pv)(const T *PT, int64_t ld, int64_t nqp,
                         const T *Vm, int64_t v_rs, int64_t ja, int64_t jb,
                         int64_t Dv, T *O, int64_t ldo)
{
    int64_t c = 0;
#if CATTN_VBYTES == 64
    /* AVX-512: 8 query rows x 2 vectors, sixteen accumulators of
       32 registers -- the 4-row block left FMA latency no slack here */
    for (; c + NQ <= Dv; c += NQ) {
        for (int64_t i = 0; i < nqp; i += 8) {
            T *o0 = O + i * ldo + c;
            V a[8][2];
            for (int r = 0; r < 8; r++) {
                a[r][0] = vload(o0 + r * ldo);
                a[r][1] = vload(o0 + r * ldo + VL);
            }
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                const V b0 = vload(vp), b1 = vload(vp + VL);
                for (int r = 0; r < 8; r++) {
                    const V pr = vset1(pp[r]);
                    a[r][0] += pr * b0;
                    a[r][1] += pr * b1;
                }
            }
            for (int r = 0; r < 8; r++) {
                vstore(o0 + r * ldo, a[r][0]);
                vstore(o0 + r * ldo + VL, a[r][1]);
            }
        }
    }
#endif
#if CATTN_F64
    /* float64: 8 query rows x 1 vector, so each key reads one whole cache
       line of P^T (8 doubles) instead of half of one */
    for (; c + VL <= Dv; c += VL) {
        for (int64_t i = 0; i < nqp; i += 8) {
            T *o0 = O + i * ldo + c;
            V a0 = vload(o0), a1 = vload(o0 + ldo), a2 = vload(o0 + 2 * ldo),
              a3 = vload(o0 + 3 * ldo), a4 = vload(o0 + 4 * ldo), a5 = vload(o0 + 5 * ldo),
              a6 = vload(o0 + 6 * ldo), a7 = vload(o0 + 7 * ldo);
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                V b = vload(vp);
                a0 += vset1(pp[0]) * b; a1 += vset1(pp[1]) * b;
                a2 += vset1(pp[2]) * b; a3 += vset1(pp[3]) * b;
                a4 += vset1(pp[4]) * b; a5 += vset1(pp[5]) * b;
                a6 += vset1(pp[6]) * b; a7 += vset1(pp[7]) * b;
            }
            vstore(o0, a0); vstore(o0 + ldo, a1); vstore(o0 + 2 * ldo, a2);
            vstore(o0 + 3 * ldo, a3); vstore(o0 + 4 * ldo, a4); vstore(o0 + 5 * ldo, a5);
            vstore(o0 + 6 * ldo, a6); vstore(o0 + 7 * ldo, a7);
        }
    }
#endif
    for (; c + NQ <= Dv; c += NQ) {
        for (int64_t i = 0; i < nqp; i += MR_O) {
            T *o0 = O + i * ldo + c, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
            V a00 = vload(o0), a01 = vload(o0 + VL), a10 = vload(o1), a11 = vload(o1 + VL),
              a20 = vload(o2), a21 = vload(o2 + VL), a30 = vload(o3), a31 = vload(o3 + VL);
            const T *vp = Vm + ja * v_rs + c;
            const T *pp = PT + ja * ld + i;
            for (int64_t j = ja; j < jb; j++, vp += v_rs, pp += ld) {
                V b0 = vload(vp), b1 = vload(vp + VL);
                V p;
                p = vset1(pp[0]); a00 += p * b0; a01 += p * b1;
                p = vset1(pp[1]); a10 += p * b0; a11 += p * b1;
                p = vset1(pp[2]); a20 += p * b0; a21 += p * b1;
                p = vset1(pp[3]); a30 += p * b0; a31 += p * b1;
            }
            vstore(o0, a00); vstore(o0 + VL, a01); vstore(o1, a10); vstore(o1 + VL, a11);
            vstore(o2, a20); vstore(o2 + VL, a21); vstore(o3, a30); vstore(o3 + VL, a31);
        }
    }
    for (; c + VL <= Dv; c += VL) {
        for (int64_t i = 0; i < nqp; i++) {
            T *o = O + i * ldo + c;
            V a = vload(o);
            for (int64_t j = ja; j < jb; j++)
                a += vset1(PT[j * ld + i]) * vload(Vm + j * v_rs + c);
            vstore(o, a);
        }
    }
    for (; c < Dv; c++) {
        for (int64_t i = 0; i < nqp; i++) {
            T a = O[i * ldo + c];
            for (int64_t j = ja; j < jb; j++)
                a += PT[j * ld + i] * Vm[j * v_rs + c];
            O[i * ldo + c] = a;
        }
    }
}

/* A row of V holding inf or NaN (x - x is NaN only then). */
static inline int SUF(row_nonfinite)(const T *v, int64_t n)
{
    T acc = 0;
    for (int64_t c = 0; c < n; c++) acc += v[c] - v[c];
    return acc != acc;
}

/* Scratch layout (in elements of T), every piece rounded to 16 elements. */
#define RUP16(x) ((((x) + 15) / 16) * 16)
/* queries are padded to 32, a multiple of every variant's panel (NQ) */
#define RUPQ(x) ((((x) + 31) / 32) * 32)
static void SUF(scratch_layout)(const cattn_params *p, int64_t *bqp, int64_t off[8])
{
    int64_t BQP = RUPQ(p->block_q);
    int64_t BK = RUP16(p->block_k);
    *bqp = BQP;
    off[0] = 0;                                      /* Q^T   D x BQP */
    off[1] = off[0] + RUP16(p->D) * BQP;             /* S^T   BK x BQP */
    off[2] = off[1] + BK * BQP;                      /* O     BQP x Dv */
    off[3] = off[2] + BQP * RUP16(p->Dv);            /* m     BQP */
    off[4] = off[3] + BQP;                           /* l     BQP */
    off[5] = off[4] + BQP;                           /* alpha BQP */
    off[6] = off[5] + BQP;                           /* K tile (float16 K) */
    off[7] = off[6] + (p->kv_half ? BK * (RUP16(p->D) + RUP16(p->Dv)) : 0);  /* end */
}

CATTN_UNUSED static size_t SUF(scratch_bytes)(const cattn_params *p)
{
    int64_t bqp, off[8];
    SUF(scratch_layout)(p, &bqp, off);
    return (size_t)off[7] * sizeof(T) + 64;
}

/* ---------------------------------------------------------------------- */
/* One (batch item, query block).                                          */
/* ---------------------------------------------------------------------- */
static void SUF(flash_block)(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{
    int64_t BQP, off[8];
    SUF(scratch_layout)(p, &BQP, off);
    T *base = (T *)scratch;
    T *QT = base + off[0], *ST = base + off[1], *O = base + off[2];
    T *mrow = base + off[3], *lrow = base + off[4], *alpha = base + off[5];

    const int64_t D = p->D, Dv = p->Dv, Lq = p->Lq, Lk = p->Lk;
    const int64_t i0 = qb * p->block_q;
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
    const int64_t nq_blk = imin(p->block_q, Lq - i0);
    /* queries past q_len produce 0 and are not computed */
    const int64_t nq = imax(0, imin(nq_blk, q_len - i0));
    const int64_t nqp = RUPQ(nq > 0 ? nq : 1);    /* a multiple of NQ */
    const int64_t ld = BQP;
    const int64_t shift = Lk - Lq;     /* p = i + shift */
    const int64_t wl = p->win_left, wr = p->win_right;
    const int score = p->score_kind;
    const int mode = p->mode;
    const T softcap = (T)p->softcap;
    const T scale = (T)p->scale[b];

    const T *Q = (const T *)p->q + p->q_off[b];
    const T *K = (const T *)p->k + p->k_off[b];
    const T *Vm = (const T *)p->v + p->v_off[b];
    const uint16_t *Kh = (const uint16_t *)p->k + p->k_off[b];
    const uint16_t *Vh = (const uint16_t *)p->v + p->v_off[b];
    T *kbuf = base + off[6], *vbuf = kbuf + p->block_k * RUP16(D);
    const uint8_t *mask = p->mask ? p->mask + p->mask_off[b] : NULL;
    const T *bias = p->bias ? (const T *)p->bias + p->bias_off[b] : NULL;
    const int64_t *qseg = p->q_seg ? p->q_seg + p->q_seg_off[b] : NULL;
    const int64_t *kseg = p->kv_seg ? p->kv_seg + p->kv_seg_off[b] : NULL;
    const T *addw = (const T *)p->add_w;
    T *lse = p->lse ? (T *)p->lse + b * Lq : NULL;

    /* ---- pack Q^T (scaled, or normalised for cosine), zero padding ---- */
    for (int64_t i = 0; i < nqp; i++) {
        T f = 0;
        if (i < nq) {
            const T *qr = Q + (i0 + i) * p->q_rs;
            if (score == CATTN_SCORE_COSINE) {
                T ss = 0;
                for (int64_t d = 0; d < D; d++) ss += qr[d * p->q_cs] * qr[d * p->q_cs];
                T nrm = (T)sqrt((double)ss);
                f = scale / (nrm > (T)1e-8 ? nrm : (T)1e-8);
            } else if (score == CATTN_SCORE_ADDITIVE) {
                f = 1;
            } else {
                f = scale;
            }
            for (int64_t d = 0; d < D; d++) QT[(i / NQ) * D * NQ + d * NQ + i % NQ] = qr[d * p->q_cs] * f;
        } else {
            for (int64_t d = 0; d < D; d++) QT[(i / NQ) * D * NQ + d * NQ + i % NQ] = 0;
        }
    }
    for (int64_t i = 0; i < nqp; i++) {
        mrow[i] = -INFINITY; lrow[i] = 0;
    }
    if (mode == CATTN_MODE_ATTENTION)
        for (int64_t i = 0; i < nqp * Dv; i++) O[i] = 0;   /* ldo = Dv */

    /* ---- the keys any query of this block may see ---- */
    int64_t k_lo = 0, k_hi = kv_len;                 /* [k_lo, k_hi) */
    if (nq > 0) {
        if (wl < CATTN_UNBOUNDED) k_lo = imax(k_lo, i0 + shift - wl);
        if (wr < CATTN_UNBOUNDED) k_hi = imin(k_hi, i0 + nq - 1 + shift + wr + 1);
    } else {
        k_hi = k_lo;
    }
    /* keys every query of the block sees (window-wise) */
    int64_t full_lo = 0, full_hi = kv_len;
    if (wl < CATTN_UNBOUNDED) full_lo = imax(full_lo, i0 + nq - 1 + shift - wl);
    if (wr < CATTN_UNBOUNDED) full_hi = imin(full_hi, i0 + shift + wr + 1);
    const int elementwise = (mask != NULL) || (bias != NULL) || (qseg != NULL);

    const int64_t BK = p->block_k;
    for (int64_t j0 = k_lo; j0 < k_hi; j0 += BK) {
        if (cattn_should_stop(p)) return;        /* Ctrl-C: the call raises */
        const int64_t nk = imin(BK, k_hi - j0);
        const T *Kt = K + j0 * p->k_rs;
        const T *Vt = Vm + j0 * p->v_rs;
        int64_t kt_rs = p->k_rs, vt_rs = p->v_rs;
        /* packed segment ids can rule out a whole tile */
        if (qseg) {
            int64_t qmin = INT64_MAX, qmax = INT64_MIN, kmin = INT64_MAX, kmax = INT64_MIN;
            for (int64_t i = 0; i < nq; i++) {
                int64_t s = qseg[(i0 + i) * p->q_seg_s];
                qmin = s < qmin ? s : qmin; qmax = s > qmax ? s : qmax;
            }
            for (int64_t j = 0; j < nk; j++) {
                int64_t s = kseg[(j0 + j) * p->kv_seg_s];
                kmin = s < kmin ? s : kmin; kmax = s > kmax ? s : kmax;
            }
            if (kmax < qmin || kmin > qmax) continue;
        }

        if (p->kv_half) {
            /* float16 K/V: widen this tile once, then the usual kernels */
            SUF(half_rows)(Kh + j0 * p->k_rs, p->k_rs, nk, D, kbuf, RUP16(D));
            if (mode == CATTN_MODE_ATTENTION)
                SUF(half_rows)(Vh + j0 * p->v_rs, p->v_rs, nk, Dv, vbuf, RUP16(Dv));
            Kt = kbuf; kt_rs = RUP16(D);
            Vt = vbuf; vt_rs = RUP16(Dv);
        }

        /* ---- scores ---- */
        if (score == CATTN_SCORE_ADDITIVE) {
            SUF(tile_scores_additive)(Kt, kt_rs, nk, QT, ld, nqp, D, addw, ST);
            if (scale != (T)1)
                for (int64_t j = 0; j < nk; j++)
                    for (int64_t i = 0; i < nqp; i += VL)
                        vstore(ST + j * ld + i, vload(ST + j * ld + i) * scale);
        } else {
            SUF(tile_scores_dot)(Kt, kt_rs, nk, QT, ld, nqp, D, ST);
            if (score == CATTN_SCORE_COSINE) {
                for (int64_t j = 0; j < nk; j++) {
                    const T *kr = Kt + j * kt_rs;
                    T ss = 0;
                    for (int64_t d = 0; d < D; d++) ss += kr[d] * kr[d];
                    T nrm = (T)sqrt((double)ss);
                    T f = (T)1 / (nrm > (T)1e-8 ? nrm : (T)1e-8);
                    for (int64_t i = 0; i < nqp; i += VL)
                        vstore(ST + j * ld + i, vload(ST + j * ld + i) * f);
                }
            }
        }
        if (softcap > 0) {
            const T inv = (T)1 / softcap;
            for (int64_t j = 0; j < nk; j++)
                for (int64_t i = 0; i < nqp; i += VL)
                    vstore(ST + j * ld + i, vtanh(vload(ST + j * ld + i) * inv) * softcap);
        }

        /* ---- masking: only tiles that need it pay for it ---- */
        const int partial = elementwise || j0 < full_lo || j0 + nk > full_hi;
        if (partial) {
            for (int64_t j = 0; j < nk; j++) {
                const int64_t jj = j0 + j;
                T *srow = ST + j * ld;
                const int64_t ks = kseg ? kseg[jj * p->kv_seg_s] : 0;
                for (int64_t i = 0; i < nq; i++) {
                    const int64_t ii = i0 + i, pos = ii + shift;
                    int keep = 1;
                    if (wl < CATTN_UNBOUNDED && jj < pos - wl) keep = 0;
                    if (wr < CATTN_UNBOUNDED && jj > pos + wr) keep = 0;
                    if (mask && !mask[ii * p->mask_rs + jj * p->mask_cs]) keep = 0;
                    if (qseg && qseg[ii * p->q_seg_s] != ks) keep = 0;
                    if (keep && bias) {
                        T bb = bias[ii * p->bias_rs + jj * p->bias_cs];
                        if (bb == -INFINITY) keep = 0;
                        else srow[i] += bb;
                    }
                    if (!keep) srow[i] = -INFINITY;
                }
            }
        }

        if (mode != CATTN_MODE_ATTENTION) {
            /* second pass: weights = exp(s - lse), masked -> 0; vector code
               with the block's lse in the alpha scratch (padding: -inf) */
            if (mode != CATTN_MODE_SCORES) {
                /* (s - m) - log(l) rather than s - lse: exact even when
                   lse = m + log(l) rounds to m at huge logits */
                const T *pm = p->lse_m ? (const T *)p->lse_m + b * Lq : lse;
                const T *pl = p->lse_logl ? (const T *)p->lse_logl + b * Lq : NULL;
                for (int64_t i = 0; i < nqp; i++) {
                    alpha[i] = i < nq ? lse[i0 + i] : (T)-INFINITY;   /* -inf: empty row */
                    mrow[i] = i < nq ? pm[i0 + i] : (T)0;
                    lrow[i] = (i < nq && pl) ? pl[i0 + i] : (T)0;
                }
                const V zero = vset1(0), ninf = vset1(-INFINITY);
                for (int64_t j = 0; j < nk; j++)
                    for (int64_t i = 0; i < nqp; i += VL) {
                        V d = (vload(ST + j * ld + i) - vload(mrow + i)) - vload(lrow + i);
                        d = vsel(VMASK(d > zero), zero, d);          /* <= 0 up to rounding; NaN stays */
                        vstore(ST + j * ld + i, vsel(VMASK(vload(alpha + i) == ninf), zero, vexp(d)));
                    }
            }
            if (mode == CATTN_MODE_WEIGHTS || mode == CATTN_MODE_SCORES) {
                T *W = (T *)p->weights + (b * Lq + i0) * Lk + j0;
                for (int64_t i = 0; i < nq; i++)
                    for (int64_t j = 0; j < nk; j++)
                        W[i * Lk + j] = ST[j * ld + i];
            } else {
                T *km = (T *)p->key_mass + b * Lk + j0;
                for (int64_t j = 0; j < nk; j++) {
                    T acc = 0;
                    for (int64_t i = 0; i < nq; i++) acc += ST[j * ld + i];
#pragma omp atomic
                    km[j] += acc;
                }
            }
            continue;
        }

        /* ---- online softmax along the key rows, queries in lanes ---- */
        int any_rescale = 0;
        const V neg_inf = vset1(-INFINITY);
        for (int64_t i = 0; i < nqp; i += VL) {
            V mold = vload(mrow + i);
            V mt = neg_inf;
            {   /* four chains: the max of a column is a latency chain */
                V m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
                int64_t j = 0;
                for (; j + 4 <= nk; j += 4) {
                    mt = vmax(vload(ST + j * ld + i), mt);
                    m1 = vmax(vload(ST + (j + 1) * ld + i), m1);
                    m2 = vmax(vload(ST + (j + 2) * ld + i), m2);
                    m3 = vmax(vload(ST + (j + 3) * ld + i), m3);
                }
                for (; j < nk; j++) mt = vmax(vload(ST + j * ld + i), mt);
                mt = vmax(vmax(m1, mt), vmax(m3, m2));
            }
            V mnew = vmax(mt, mold);
            VI empty = VMASK(mnew == neg_inf);
            V a = vsel(empty, vset1(1), vexp(mold - mnew));
            V msub = vsel(empty, vset1(0), mnew);
            V lsum = {0};
            if (partial) {
                const V negzero = vset1((T)-0.0);
                for (int64_t j = 0; j < nk; j++) {
                    V s = vload(ST + j * ld + i);
                    V e = vexp(s - msub);
                    lsum += e;
                    /* flag masked entries as -0.0 for the non-finite-V guard */
                    vstore(ST + j * ld + i, vsel(VMASK(s == neg_inf), negzero, e));
                }
            } else {
                for (int64_t j = 0; j < nk; j++) {
                    V e = vexp(vload(ST + j * ld + i) - msub);
                    lsum += e;
                    vstore(ST + j * ld + i, e);
                }
            }
            vstore(lrow + i, vload(lrow + i) * a + lsum);
            vstore(mrow + i, mnew);
            vstore(alpha + i, a);
            for (int v = 0; v < VL; v++) any_rescale |= VLANE(a, v) != (T)1;
        }
        if (any_rescale)
            for (int64_t i = 0; i < nqp; i++) {
                const T a = alpha[i];
                if (a != (T)1) for (int64_t c = 0; c < Dv; c++) O[i * Dv + c] *= a;
            }

        /* ---- O += P . V, never touching a masked key's V ---- */
        if (!partial) {
            SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, 0, nk, Dv, O, Dv);
        } else {
            int64_t ja = 0;
            for (int64_t j = 0; j < nk; j++) {
                if (!SUF(row_nonfinite)(Vt + j * vt_rs, Dv)) continue;
                if (j > ja) SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, ja, j, Dv, O, Dv);
                for (int64_t i = 0; i < nq; i++) {
                    T pw = ST[j * ld + i];
                    if (signbit(pw)) continue;          /* masked: skip */
                    for (int64_t c = 0; c < Dv; c++) O[i * Dv + c] += pw * Vt[j * vt_rs + c];
                }
                ja = j + 1;
            }
            if (nk > ja) SUF(tile_pv)(ST, ld, nqp, Vt, vt_rs, ja, nk, Dv, O, Dv);
        }
    }

    if (mode != CATTN_MODE_ATTENTION) return;

    /* ---- finish: divide by the row sums, fold in sinks, write out ---- */
    T *out = (T *)p->out + p->out_off[b];
    const int has_sink = p->sinks != NULL;
    const T sink = has_sink ? (T)p->sinks[b] : (T)0;
    for (int64_t i = 0; i < nq_blk; i++) {
        T *orow = out + (i0 + i) * p->out_rs;
        T m = i < nq ? mrow[i] : (T)-INFINITY;
        T l = i < nq ? lrow[i] : (T)0;
        T f;
        if (has_sink && i < nq) {
            T mf = m > sink ? m : sink;
            T am = (m == -INFINITY) ? (T)0 : (T)exp((double)(m - mf));
            l = l * am + (T)exp((double)(sink - mf));
            f = am / l;
            m = mf;
        } else {
            f = (T)1 / l;
        }
        if (l == 0 || i >= nq) {
            /* no key left (or a padded query): zeros, lse -inf */
            for (int64_t c = 0; c < Dv; c++) orow[c * p->out_cs] = 0;
            if (lse) lse[i0 + i] = -INFINITY;
            if (p->lse_m) ((T *)p->lse_m)[b * Lq + i0 + i] = -INFINITY;
        } else {
            for (int64_t c = 0; c < Dv; c++) orow[c * p->out_cs] = O[i * Dv + c] * f;
            /* a +inf logit: lse is +inf (the output is NaN: inf - inf) */
            const T logl = m == (T)INFINITY ? (T)0 : (T)log((double)l);
            if (lse) lse[i0 + i] = m + logl;
            if (p->lse_m) {
                ((T *)p->lse_m)[b * Lq + i0 + i] = m;
                ((T *)p->lse_logl)[b * Lq + i0 + i] = logl;
            }
        }
    }
}


/* ---------------------------------------------------------------------- */
/* Decode: few queries (Lq <= CATTN_DECODE_MAX_LQ), many keys.  Not a GEMM: */
/* K and V are streamed once per key range with vector dot products and    */
/* axpys.  A work item is (batch item, key split); it leaves unnormalised  */
/* partial results (acc, running max m, sum l) that decode_finish merges   */
/* with the log-sum-exp rule.                                              */
/* ---------------------------------------------------------------------- */
#define DCH 64   /* keys per chunk: their scores stay in L1 */

static inline T SUF(hsum)(V x)
{
    /* a tree of shuffles: a store and scalar reloads would stall on
       store-to-load forwarding, worst with 64-byte vectors */
#if defined(CATTN_AVX2) && CATTN_VBYTES == 64 && !CATTN_F64
    return _mm512_reduce_add_ps((__m512)x);
#elif defined(CATTN_AVX2) && CATTN_VBYTES == 64
    return _mm512_reduce_add_pd((__m512d)x);
#elif defined(CATTN_AVX2) && !CATTN_F64
    __m128 h = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#elif defined(CATTN_AVX2)
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128((__m256d)x), _mm256_extractf128_pd((__m256d)x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#elif CATTN_PORTABLE
    return x;
#else
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
#endif
}

static inline T SUF(dot)(const T *a, const T *b, int64_t n)
{
    V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    int64_t d = 0;
    for (; d + 4 * VL <= n; d += 4 * VL) {
        c0 += vload(a + d) * vload(b + d);
        c1 += vload(a + d + VL) * vload(b + d + VL);
        c2 += vload(a + d + 2 * VL) * vload(b + d + 2 * VL);
        c3 += vload(a + d + 3 * VL) * vload(b + d + 3 * VL);
    }
    for (; d + VL <= n; d += VL) c0 += vload(a + d) * vload(b + d);
    T s = SUF(hsum)((c0 + c1) + (c2 + c3));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

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

/* VL float16 values widened to T (F16C on Haswell, exact software otherwise) */
static inline V SUF(vload_h)(const uint16_t *p)
{
#if defined(CATTN_HAVE_F16C) && !CATTN_F64 && CATTN_VBYTES == 64
    return (V)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(CATTN_HAVE_F16C) && !CATTN_F64
    return (V)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#elif CATTN_PORTABLE
    return SUF(half1)(p[0]);
#else
    V r;
    for (int v = 0; v < VL; v++) r[v] = SUF(half1)(p[v]);
    return r;
#endif
}

/* float16 rows are prefetched this many rows ahead (measured: 8 too few,
   32 best, 64 no better at one and two threads) */
#define PFK 32
static inline void SUF(prefetch_row)(const void *row, int64_t bytes)
{
    for (int64_t o = 0; o < bytes; o += 64) CATTN_PREFETCH((const char *)row + o);
}

static inline T SUF(dot_h)(const T *a, const uint16_t *b, int64_t n)
{
    V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    int64_t d = 0;
    for (; d + 4 * VL <= n; d += 4 * VL) {
        c0 += vload(a + d) * SUF(vload_h)(b + d);
        c1 += vload(a + d + VL) * SUF(vload_h)(b + d + VL);
        c2 += vload(a + d + 2 * VL) * SUF(vload_h)(b + d + 2 * VL);
        c3 += vload(a + d + 3 * VL) * SUF(vload_h)(b + d + 3 * VL);
    }
    for (; d + VL <= n; d += VL) c0 += vload(a + d) * SUF(vload_h)(b + d);
    T s = SUF(hsum)((c0 + c1) + (c2 + c3));
    for (; d < n; d++) s += a[d] * SUF(half1)(b[d]);
    return s;
}

/* Four float16 keys' dot products with one query, two accumulators each:
   eight independent FMA chains, each query vector loaded once for four
   rows (rows at k, k + rs, k + 2 rs, k + 3 rs).  float16 only: with a
   float32 cache, four concurrent row streams from DRAM measured 1.4x
   slower than one key after another. */
static inline void SUF(dot4_h)(const T *a, const uint16_t *k, int64_t rs, int64_t n, T *out)
{
    V c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0};
    int64_t d = 0;
    for (; d + 2 * VL <= n; d += 2 * VL) {
        const V x = vload(a + d), y = vload(a + d + VL);
        c0 += x * SUF(vload_h)(k + d);          d0 += y * SUF(vload_h)(k + d + VL);
        c1 += x * SUF(vload_h)(k + rs + d);     d1 += y * SUF(vload_h)(k + rs + d + VL);
        c2 += x * SUF(vload_h)(k + 2 * rs + d); d2 += y * SUF(vload_h)(k + 2 * rs + d + VL);
        c3 += x * SUF(vload_h)(k + 3 * rs + d); d3 += y * SUF(vload_h)(k + 3 * rs + d + VL);
    }
    if (d + VL <= n) {
        const V x = vload(a + d);
        c0 += x * SUF(vload_h)(k + d);          c1 += x * SUF(vload_h)(k + rs + d);
        c2 += x * SUF(vload_h)(k + 2 * rs + d); c3 += x * SUF(vload_h)(k + 3 * rs + d);
        d += VL;
    }
    out[0] = SUF(hsum)(c0 + d0); out[1] = SUF(hsum)(c1 + d1);
    out[2] = SUF(hsum)(c2 + d2); out[3] = SUF(hsum)(c3 + d3);
    for (; d < n; d++)
        for (int r = 0; r < 4; r++) out[r] += a[d] * SUF(half1)(k[r * rs + d]);
}

/* acc += sum_t e[t] * row_t for the nk kept keys of a chunk (row_t at
   rows[t] elements past vb), one block of up to eight accumulator vectors
   at a time, held in registers across the keys: no load and store of acc
   per key.  float16 cache only (float32: the per-key axpy streams each V
   row whole and measured faster from DRAM). */
static inline void SUF(pv_rows_h)(const T *e, const int64_t *rows, int64_t nk,
                                  const uint16_t *vb, T *acc, int64_t Dv)
{
    int64_t c = 0;
    for (; c + 8 * VL <= Dv; c += 8 * VL) {
        V a[8];
        for (int u = 0; u < 8; u++) a[u] = vload(acc + c + u * VL);
        for (int64_t t = 0; t < nk; t++) {
            const uint16_t *x = vb + rows[t] + c;
            const V w = vset1(e[t]);
            for (int u = 0; u < 8; u++) a[u] += w * SUF(vload_h)(x + u * VL);
        }
        for (int u = 0; u < 8; u++) vstore(acc + c + u * VL, a[u]);
    }
    for (; c + 2 * VL <= Dv; c += 2 * VL) {
        V a0 = vload(acc + c), a1 = vload(acc + c + VL);
        for (int64_t t = 0; t < nk; t++) {
            const uint16_t *x = vb + rows[t] + c;
            const V w = vset1(e[t]);
            a0 += w * SUF(vload_h)(x);
            a1 += w * SUF(vload_h)(x + VL);
        }
        vstore(acc + c, a0); vstore(acc + c + VL, a1);
    }
    for (; c + VL <= Dv; c += VL) {
        V a0 = vload(acc + c);
        for (int64_t t = 0; t < nk; t++) a0 += vset1(e[t]) * SUF(vload_h)(vb + rows[t] + c);
        vstore(acc + c, a0);
    }
    for (; c < Dv; c++) {
        T a0 = acc[c];
        for (int64_t t = 0; t < nk; t++) a0 += e[t] * SUF(half1)(vb[rows[t] + c]);
        acc[c] = a0;
    }
}

CATTN_UNUSED static size_t SUF(decode_scratch_bytes)(const cattn_params *p)
{
    return (size_t)(CATTN_DECODE_MAX_LQ * RUP16(p->D) + RUP16(p->D) + 4 * DCH
                    + (p->kv_half ? DCH * (RUP16(p->D) + RUP16(p->Dv)) : 0)) * sizeof(T)
           + DCH * sizeof(int64_t) + 64;
}

static void SUF(decode_block)(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                              T *acc, T *mm, T *ll, void *scratch)
{
    const int64_t D = p->D, Dv = p->Dv, Lq = p->Lq, Lk = p->Lk;
    const int64_t D16 = RUP16(D);
    T *qs = (T *)scratch;                          /* Lq x D16 */
    T *tmp = qs + CATTN_DECODE_MAX_LQ * D16;       /* D16 */
    T *s = tmp + D16;                              /* DCH */
    T *inv_k = s + DCH;                            /* DCH */
    T *e = inv_k + DCH;                            /* DCH */
    int64_t *rows = (int64_t *)(e + DCH);          /* DCH (8-byte aligned: even offset) */
    T *kbuf = (T *)(rows + DCH);                   /* DCH x D16 (float16 K) */
    const uint16_t *Kh = (const uint16_t *)p->k + p->k_off[b];
    const uint16_t *Vh = (const uint16_t *)p->v + p->v_off[b];
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    const int64_t kv_len = p->kv_len ? p->kv_len[b] : Lk;
    const int64_t nq = imax(0, imin(Lq, q_len));
    const int64_t shift = Lk - Lq;
    const int64_t wl = p->win_left, wr = p->win_right;
    const int score = p->score_kind;
    const T scale = (T)p->scale[b];
    const T softcap = (T)p->softcap;
    const T *Q = (const T *)p->q + p->q_off[b];
    const T *K = (const T *)p->k + p->k_off[b];
    const T *Vm = (const T *)p->v + p->v_off[b];
    const uint8_t *mask = p->mask ? p->mask + p->mask_off[b] : NULL;
    const T *bias = p->bias ? (const T *)p->bias + p->bias_off[b] : NULL;
    const int64_t *qseg = p->q_seg ? p->q_seg + p->q_seg_off[b] : NULL;
    const int64_t *kseg = p->kv_seg ? p->kv_seg + p->kv_seg_off[b] : NULL;
    const T *addw = (const T *)p->add_w;

    for (int64_t i = 0; i < Lq; i++) {
        mm[i] = -INFINITY; ll[i] = 0;
        for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] = 0;
    }
    je = imin(je, kv_len);
    if (js >= je || nq == 0) return;

    for (int64_t i = 0; i < nq; i++) {
        const T *qr = Q + i * p->q_rs;
        T f = score == CATTN_SCORE_ADDITIVE ? (T)1 : scale;
        if (score == CATTN_SCORE_COSINE) {
            T ss = 0;
            for (int64_t d = 0; d < D; d++) ss += qr[d * p->q_cs] * qr[d * p->q_cs];
            T nrm = (T)sqrt((double)ss);
            f = scale / (nrm > (T)1e-8 ? nrm : (T)1e-8);
        }
        for (int64_t d = 0; d < D; d++) qs[i * D16 + d] = qr[d * p->q_cs] * f;
    }

    for (int64_t j0 = js; j0 < je; j0 += DCH) {
        /* Ctrl-C: the call raises (polled every 4 chunks: a poll reads the clock) */
        if (((j0 - js) & (4 * DCH - 1)) == 0 && cattn_should_stop(p)) return;
        const int64_t nk = imin(DCH, je - j0);
        /* this chunk's K rows: in place, or widened from float16 for the
           score kinds that need several passes over a row */
        const int half = p->kv_half;
        const T *Kc = K + j0 * p->k_rs;
        int64_t kc_rs = p->k_rs;
        if (half && score != CATTN_SCORE_DOT) {
            SUF(half_rows)(Kh + j0 * p->k_rs, p->k_rs, nk, D, kbuf, D16);
            Kc = kbuf; kc_rs = D16;
        }
        if (score == CATTN_SCORE_COSINE)
            for (int64_t j = 0; j < nk; j++) {
                const T *kr = Kc + j * kc_rs;
                T nrm = (T)sqrt((double)SUF(dot)(kr, kr, D));
                inv_k[j] = (T)1 / (nrm > (T)1e-8 ? nrm : (T)1e-8);
            }
        for (int64_t i = 0; i < nq; i++) {
            const int64_t pos = i + shift;
            int64_t jlo = j0, jhi = j0 + nk;
            if (wl < CATTN_UNBOUNDED) jlo = imax(jlo, pos - wl);
            if (wr < CATTN_UNBOUNDED) jhi = imin(jhi, pos + wr + 1);
            if (jlo >= jhi) continue;
            const T *qi = qs + i * D16;
            const int64_t qsg = qseg ? qseg[i * p->q_seg_s] : 0;
            T mc = -INFINITY;
            if (score != CATTN_SCORE_ADDITIVE) {
                /* raw dot products first, four keys at a time */
                int64_t j = jlo;
                if (half && score == CATTN_SCORE_DOT) {
                    const uint16_t *kh = Kh + jlo * p->k_rs;
                    for (; j + 4 <= jhi; j += 4, kh += 4 * p->k_rs) {
                        /* software prefetch PFK rows ahead: float16 rows carry
                           half the bytes per instruction, too few misses in
                           flight for one core to reach the streaming rate */
                        if (i == 0)   /* once per chunk, not per query */
                            for (int r = 0; r < 4; r++)
                                SUF(prefetch_row)(Kh + imin(j + r + PFK, je - 1) * p->k_rs, 2 * D);
                        SUF(dot4_h)(qi, kh, p->k_rs, D, s + (j - jlo));
                    }
                    for (; j < jhi; j++) s[j - jlo] = SUF(dot_h)(qi, Kh + j * p->k_rs, D);
                } else {
                    for (; j < jhi; j++) s[j - jlo] = SUF(dot)(qi, Kc + (j - j0) * kc_rs, D);
                }
            }
            if (softcap <= 0 && !mask && !kseg && !bias && score == CATTN_SCORE_DOT) {
                /* plain scores: s holds them already */
                for (int64_t t = 0; t < jhi - jlo; t++) if (s[t] > mc) mc = s[t];
            } else
            for (int64_t j = jlo; j < jhi; j++) {
                T sc;
                if (score == CATTN_SCORE_ADDITIVE) {
                    const T *kr = Kc + (j - j0) * kc_rs;
                    V acc0 = {0};
                    int64_t d = 0;
                    for (; d + VL <= D; d += VL)
                        acc0 += vload(addw + d) * vtanh(vload(qi + d) + vload(kr + d));
                    sc = SUF(hsum)(acc0);
                    for (; d < D; d++) sc += addw[d] * SUF(tanh1)(qi[d] + kr[d]);
                    sc *= scale;
                } else {
                    sc = s[j - jlo];
                    if (score == CATTN_SCORE_COSINE) sc *= inv_k[j - j0];
                }
                if (softcap > 0) sc = softcap * SUF(tanh1)(sc / softcap);
                int keep = 1;
                if (mask && !mask[i * p->mask_rs + j * p->mask_cs]) keep = 0;
                if (kseg && kseg[j * p->kv_seg_s] != qsg) keep = 0;
                if (keep && bias) {
                    T bb = bias[i * p->bias_rs + j * p->bias_cs];
                    if (bb == -INFINITY) keep = 0; else sc += bb;
                }
                if (!keep) sc = -INFINITY;
                s[j - jlo] = sc;
                if (sc > mc) mc = sc;
            }
            const int64_t n = jhi - jlo;
            T mold = mm[i];
            T mnew = mc > mold ? mc : mold;
            T msub = mnew == -INFINITY ? (T)0 : mnew;
            if (mnew != mold && mold != -INFINITY) {
                T a = (T)exp((double)(mold - mnew));
                ll[i] *= a;
                for (int64_t c = 0; c < Dv; c++) acc[i * Dv + c] *= a;
            }
            int64_t j = 0;
            for (; j + VL <= n; j += VL) vstore(e + j, vexp(vload(s + j) - msub));
            for (; j < n; j++) { V t = vset1(s[j] - msub); e[j] = VLANE(vexp(t), 0); }
            /* the chunk's kept keys, compacted: masked ones are never
               multiplied (NaN or inf in a masked value cannot leak) */
            T lsum = 0;
            int64_t nk2 = 0;
            for (j = 0; j < n; j++) {
                if (half && i == 0)
                    SUF(prefetch_row)(Vh + imin(jlo + j + PFK, je - 1) * p->v_rs, 2 * Dv);
                if (s[j] == -INFINITY) continue;
                lsum += e[j];
                e[nk2] = e[j];
                rows[nk2++] = (jlo + j) * p->v_rs;
            }
            if (half) SUF(pv_rows_h)(e, rows, nk2, Vh, acc + i * Dv, Dv);
            else for (j = 0; j < nk2; j++) SUF(axpy)(e[j], Vm + rows[j], acc + i * Dv, Dv);
            ll[i] += lsum;
            mm[i] = mnew;
        }
    }
}

static void SUF(decode_finish)(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                               const T *acc, const T *mm, const T *ll)
{
    /* partial s of (b, i): acc[s * Lq * Dv + i * Dv], mm/ll[s * Lq + i] */
    const int64_t Lq = p->Lq, Dv = p->Dv;
    const int64_t q_len = p->q_len ? p->q_len[b] : Lq;
    T *orow = (T *)p->out + p->out_off[b] + i * p->out_rs;
    T *lse = p->lse ? (T *)p->lse + b * Lq : NULL;
    T M = -INFINITY;
    for (int64_t s = 0; s < n_split; s++) { T m = mm[s * Lq + i]; if (m > M) M = m; }
    T L = 0;
    int any_nan = 0;
    for (int64_t s = 0; s < n_split; s++) {
        T l = ll[s * Lq + i];
        if (l != l) any_nan = 1;
        if (mm[s * Lq + i] != -INFINITY) L += l * (T)exp((double)(mm[s * Lq + i] - M));
    }
    if (any_nan) L = NAN;
    const T M0 = M;
    T f_extra = 1;
    if (p->sinks && i < q_len) {
        const T sink = (T)p->sinks[b];
        T mf = M > sink ? M : sink;
        T am = (M == -INFINITY) ? (T)0 : (T)exp((double)(M - mf));
        L = L * am + (T)exp((double)(sink - mf));
        f_extra = am;
        M = mf;
    }
    if (i >= q_len || L == 0) {
        for (int64_t c = 0; c < Dv; c++) orow[c * p->out_cs] = 0;
        if (lse) lse[i] = -INFINITY;
        return;
    }
    /* sum_s acc_s * exp(m_s - M0): the split weights computed once (up to
       64 splits; more recompute them per column), each output written once */
    T wsplit[64];
    const int64_t nw = n_split <= 64 ? n_split : 0;
    for (int64_t s = 0; s < nw; s++) {
        T m = mm[s * Lq + i];
        wsplit[s] = (m == -INFINITY && ll[s * Lq + i] == 0) ? (T)0           /* empty split */
                    : (m == -INFINITY) ? (T)1 : (T)exp((double)(m - M0));
    }
    for (int64_t c = 0; c < Dv; c++) {
        T o = 0;
        for (int64_t s = 0; s < n_split; s++) {
            T m = mm[s * Lq + i];
            if (m == -INFINITY && ll[s * Lq + i] == 0) continue;   /* empty split */
            T w = nw ? wsplit[s] : (m == -INFINITY) ? (T)1 : (T)exp((double)(m - M0));
            o += acc[(s * Lq + i) * Dv + c] * w;
        }
        orow[c * p->out_cs] = o * f_extra / L;
    }
    if (lse) lse[i] = M == (T)INFINITY ? M : M + (T)log((double)L);   /* +inf logit */
}
#undef DCH
#undef PFK

#undef V
#undef VU
#undef VI
#undef VL
#undef NQ
#undef MR_S
#undef MR_O
#undef vload
#undef vstore
#undef vset1
#undef vsel
#undef vbits
#undef vfrom
#undef VMASK
#undef VLANE
#undef vmax
#undef vexp
#undef vtanh
#undef imax
#undef imin
#undef RUP16
#undef RUPQ
