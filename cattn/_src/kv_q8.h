/*
 * int8 K/V rows (CATTN_KV_I8, llama.cpp's q8_0 layout): int8 values with a
 * float32 scale per CATTN_QBLOCK values along the row.  The steps the tile
 * and decode paths share, written once on the primitives (vload_i8 widens
 * VL int8 values exactly).  Included by instantiate.h after simd_math.h.
 */
#define QB CATTN_QBLOCK

/* one row's n values dequantised into dst (value = int8 * scale) */
static inline void SUF(q8_row)(const int8_t *x, const float *xs, int64_t n, T *dst)
{
    for (int64_t c0 = 0, g = 0; c0 < n; c0 += QB, g++) {
        const int64_t c1 = imin(c0 + QB, n);
        const T sg = (T)xs[g];
        const V s = vset1(sg);
        int64_t c = c0;
        for (; c + VL <= c1; c += VL) vstore(dst + c, vload_i8(x + c) * s);
        for (; c < c1; c++) dst[c] = (T)x[c] * sg;
    }
}

/* rows of an int8 tile (row stride rs, scale-row stride srs) into scratch
   with leading dimension ld */
static void SUF(q8_rows)(const int8_t *src, int64_t rs, const float *sc, int64_t srs,
                         int64_t n_rows, int64_t n, T *dst, int64_t ld)
{
    for (int64_t r = 0; r < n_rows; r++) SUF(q8_row)(src + r * rs, sc + r * srs, n, dst + r * ld);
}

/* sum_d a[d] x[d] scale(d): the int8 products summed per block, each block
   sum multiplied by its scale once */
static inline T SUF(dot_q8)(const T *a, const int8_t *x, const float *xs, int64_t n)
{
    V acc0 = {0}, acc1 = {0};
    int64_t c0 = 0, g = 0;
    for (; c0 + QB <= n; c0 += QB, g++) {
        V b0 = {0}, b1 = {0};
        for (int64_t c = c0; c < c0 + QB; c += 2 * VL) {
            b0 += vload(a + c) * vload_i8(x + c);
            b1 += vload(a + c + VL) * vload_i8(x + c + VL);
        }
        /* two chains over the blocks */
        if (g & 1) acc1 += (b0 + b1) * vset1((T)xs[g]);
        else acc0 += (b0 + b1) * vset1((T)xs[g]);
    }
    T s = hsum(acc0 + acc1);
    if (c0 < n) {     /* the last, shorter block */
        V b0 = {0};
        int64_t c = c0;
        for (; c + VL <= n; c += VL) b0 += vload(a + c) * vload_i8(x + c);
        T t = hsum(b0);
        for (; c < n; c++) t += a[c] * (T)x[c];
        s += t * (T)xs[g];
    }
    return s;
}

/* acc[c:c + U VL] += sum_t e[t] * row(keys[t])[c:c + U VL] for nk int8 rows
   (row j at j rs past xb, its scales at j srs past sb): U accumulator
   vectors held in registers across the rows, as pv_rows_h does for
   float16 (U is a constant where this is inlined) */
CATTN_STEP void SUF(pv_block_q8)(const T *e, const int64_t *keys, int64_t nk,
                                 const int8_t *xb, int64_t rs, const float *sb, int64_t srs,
                                 T *acc, int64_t c, const int U)
{
    V a[8];
    for (int u = 0; u < U; u++) a[u] = vload(acc + c + u * VL);
    for (int64_t t = 0; t < nk; t++) {
        const int8_t *x = xb + keys[t] * rs + c;
        const float *xs = sb + keys[t] * srs;
        const T et = e[t];
        for (int u = 0; u < U; u++) {
            const V w = vset1(et * (T)xs[(c + u * VL) / QB]);
            a[u] += w * vload_i8(x + u * VL);
        }
    }
    for (int u = 0; u < U; u++) vstore(acc + c + u * VL, a[u]);
}

static inline void SUF(pv_rows_q8)(const T *e, const int64_t *keys, int64_t nk,
                                   const int8_t *xb, int64_t rs, const float *sb, int64_t srs,
                                   T *acc, int64_t n)
{
    int64_t c = 0;
    for (; c + 8 * VL <= n; c += 8 * VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 8);
    for (; c + 4 * VL <= n; c += 4 * VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 4);
    for (; c + VL <= n; c += VL) SUF(pv_block_q8)(e, keys, nk, xb, rs, sb, srs, acc, c, 1);
    for (; c < n; c++) {
        T a0 = acc[c];
        for (int64_t t = 0; t < nk; t++)
            a0 += e[t] * ((T)xb[keys[t] * rs + c] * (T)sb[keys[t] * srs + c / QB]);
        acc[c] = a0;
    }
}
#undef QB
