/*
 * Vector primitives shared by every ISA that has GCC/clang vector
 * extensions (generic, AVX2, AVX-512): the vector types and the operations
 * the extensions express directly.  Included once per instantiation, with
 * T, CATTN_F64, SUF and CATTN_VBYTES set (see instantiate.h).
 */
#if CATTN_F64
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

static inline V SUF(vload)(const T *p) { return (V)(*(const VU *)p); }
static inline void SUF(vstore)(T *p, V x) { *(VU *)p = (VU)x; }
static inline V SUF(vset1)(T x)
{
    /* An explicit initializer compiles to one broadcast; `zero + x` would
       turn -0.0 into +0.0 and a lane loop compiles to a chain of inserts. */
#if VL == 4
    return (V){x, x, x, x};
#elif VL == 8
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

#if !CATTN_F64
/* VL floats -> bfloat16 bits at p (unaligned): round to nearest even, NaN
   kept quiet -- cattn_float_to_bf16 (flash.c) lane by lane, so results are
   bit-identical to the scalar step (the hardware VCVTNEPS2BF16 would flush
   subnormals to zero) */
typedef uint32_t SUF(VUW) __attribute__((vector_size(CATTN_VBYTES)));
typedef uint16_t SUF(VH16) __attribute__((vector_size(CATTN_VBYTES / 2), aligned(2)));
static inline void SUF(vstore_bf16)(uint16_t *p, V x)
{
    const SUF(VUW) u = (SUF(VUW))x;
    const SUF(VUW) r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const SUF(VUW) nan = (SUF(VUW))((u & 0x7fffffffu) > 0x7f800000u);
    *(SUF(VH16) *)p = __builtin_convertvector((nan & ((u >> 16) | 0x40u)) | (~nan & r),
                                              SUF(VH16));
}
#endif
