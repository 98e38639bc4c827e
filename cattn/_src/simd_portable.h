/*
 * Primitives of the standard-C variant (MSVC has no vector extensions; any
 * compiler can be forced with -DCATTN_PORTABLE=1): one lane per "vector",
 * the same kernels, scalar speed.  Lane masks are unsigned all-ones/zero
 * words, as a vector comparison gives.
 */
typedef T SUF(V);
typedef T SUF(VU);
#if CATTN_F64
typedef uint64_t SUF(VI);
#else
typedef uint32_t SUF(VI);
#endif
#define VL 1
#define V SUF(V)
#define VU SUF(VU)
#define VI SUF(VI)
#define CATTN_NREGS 16

static inline V SUF(vload)(const T *p) { return *p; }
static inline void SUF(vstore)(T *p, V x) { *p = x; }
static inline V SUF(vset1)(T x) { return x; }
/* bits of a lane and back (memcpy: the standard's type pun) */
static inline VI SUF(vbits)(V x) { VI i; memcpy(&i, &x, sizeof i); return i; }
static inline V SUF(vfrom)(VI i) { V x; memcpy(&x, &i, sizeof x); return x; }
#define VMASK(c) ((VI)0 - (VI)(c))
#define VLANE(x, v) (x)
static inline V SUF(vsel)(VI m, V a, V b) { return m ? a : b; }
static inline V SUF(vmax)(V a, V b) { return a > b ? a : b; }
static inline V SUF(vmin)(V a, V b) { return a < b ? a : b; }
static inline T SUF(hsum)(V x) { return x; }
static inline V SUF(vload_h)(const uint16_t *p) { return (T)cattn_half_to_float(p[0]); }
#if !CATTN_F64
static inline void SUF(vstore_bf16)(uint16_t *p, V x) { p[0] = cattn_float_to_bf16(x); }
#endif
static inline V SUF(vload_i8)(const int8_t *p) { return (T)p[0]; }

/* the four sums of a, b, c, d into o[0..3] */
static inline void SUF(hsum4)(V a, V b, V c, V d, T *o)
{
    o[0] = SUF(hsum)(a); o[1] = SUF(hsum)(b); o[2] = SUF(hsum)(c); o[3] = SUF(hsum)(d);
}
