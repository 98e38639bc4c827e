/*
 * Instantiates the kernels per ISA and hands them out as a kernel table
 * resolved from the CPU's capabilities (SimSIMD's c/lib.c in spirit).  The
 * default build carries no -march flag: the Haswell (AVX2+FMA+F16C) and
 * Skylake-X (AVX-512) variants are compiled inside target regions and only
 * called when the CPU reports the features (Cooper Lake: AVX512_BF16 for
 * a bfloat16 cache).  CATTN_ISA=generic|haswell|skylake caps the choice
 * (the tests use it to cover every variant on one
 * machine).
 *
 * A new ISA: a simd_<isa>.h of primitives, one CATTN_VARIANT block below
 * (its target region and instantiate.h), an entry in CATTN_ISAS and a test
 * in detect_isa().
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "flash.h"
#include "paged.h"
#ifdef _OPENMP
#include <omp.h>
#define CATTN_THREAD_NUM() omp_get_thread_num()
#else
#define CATTN_THREAD_NUM() 0
#endif

/* True when the call must stop now (see cattn_params.poll/stop). */
static inline int cattn_should_stop(const cattn_params *p)
{
    if (!p->stop) return 0;
    if (*p->stop) return 1;
    if (p->poll && CATTN_THREAD_NUM() == 0 && p->poll(p->poll_ctx)) {
        *p->stop = 1;
        return 1;
    }
    return 0;
}

/* CATTN_PORTABLE: standard C only (MSVC's C has no vector extensions; any
   compiler can be forced with -DCATTN_PORTABLE=1, which the tests use). */
#ifndef CATTN_PORTABLE
#if defined(_MSC_VER) && !defined(__clang__)
#define CATTN_PORTABLE 1
#else
#define CATTN_PORTABLE 0
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CATTN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#define CATTN_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
/* the named steps of a kernel: inlined into it, as if written in place */
#define CATTN_STEP static inline __attribute__((always_inline))
#else
#define CATTN_PREFETCH(p) ((void)(p))
#define CATTN_PREFETCH_L2(p) ((void)(p))
#define CATTN_STEP static inline
#endif

#if !CATTN_PORTABLE && (defined(__GNUC__) || defined(__clang__)) \
    && (defined(__x86_64__) || defined(__i386__))
#define CATTN_X86_DISPATCH 1
#else
#define CATTN_X86_DISPATCH 0
#endif
#if CATTN_X86_DISPATCH
#include <immintrin.h>
#endif

/* float16 (bits) -> float, exact (subnormals included) */
static inline float cattn_half_to_float(uint16_t h)
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
    return f;
}

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

/* float -> float16 bits, round to nearest even (as NumPy's astype):
   overflow is inf, NaN stays a quiet NaN, subnormals exact */
static inline uint16_t cattn_float_to_half(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u)                        /* inf, NaN */
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);   /* rounds past 65504 */
    if (a < 0x38800000u) {                       /* below 2^-14: a subnormal half or 0 */
        if (a < 0x33000000u) return sign;        /* below half the smallest subnormal */
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;          /* to units of 2^-24 */
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    /* normal: rebias the exponent, round the 13 dropped bits (a carry into
       the exponent is right, up to inf) */
    uint32_t h = ((a - 0x38000000u) >> 13);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

/* q and out in a 16-bit format (cattn_io_format), one value */
static inline float cattn_io_to_float(int fmt, uint16_t h)
{
    return fmt == CATTN_IO_BF16 ? cattn_bf16_to_float(h) : cattn_half_to_float(h);
}
static inline uint16_t cattn_io_from_float(int fmt, float f)
{
    return fmt == CATTN_IO_BF16 ? cattn_float_to_bf16(f) : cattn_float_to_half(f);
}

/* ---- the variants ---- */
#if CATTN_PORTABLE
#define CATTN_ISA portable
#define CATTN_SIMD "simd_portable.h"
#else
#define CATTN_ISA generic
#define CATTN_SIMD "simd_generic.h"
#define CATTN_VBYTES 32
#endif
#include "instantiate.h"
#undef CATTN_ISA
#undef CATTN_SIMD
#undef CATTN_VBYTES

#if CATTN_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define CATTN_ISA haswell
#define CATTN_SIMD "simd_avx2.h"
#define CATTN_VBYTES 32
#include "instantiate.h"
#undef CATTN_ISA
#undef CATTN_SIMD
#undef CATTN_VBYTES
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define CATTN_ISA skylake
#define CATTN_SIMD "simd_avx512.h"
#define CATTN_VBYTES 64
#include "instantiate.h"
#undef CATTN_ISA
#undef CATTN_SIMD
#undef CATTN_VBYTES
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
/* Cooper Lake: the Skylake-X kernels plus VDPBF16PS for a bfloat16 cache
   (only the bfloat16 kernels are instantiated again) */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,f16c")
#endif
#define CATTN_ISA cooperlake
#define CATTN_SIMD "simd_avx512bf16.h"
#define CATTN_VBYTES 64
#include "instantiate_bf16.h"
#undef CATTN_ISA
#undef CATTN_SIMD
#undef CATTN_VBYTES
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* CATTN_X86_DISPATCH */

/* ---- the kernel tables, one per (ISA, compute type) ---- */
#define CATTN_TABLE(isa, ty) {                                              \
    #isa, scratch_bytes_##ty##_##isa, flash_block_##ty##_##isa,             \
    decode_scratch_bytes_##ty##_##isa, decode_block_##ty##_##isa,           \
    decode_finish_##ty##_##isa,                                             \
    bwd_scratch_bytes_##ty##_##isa, bwd_kv_##ty##_##isa, bwd_q_##ty##_##isa }

enum { ISA_BASE = 0, ISA_HASWELL = 1, ISA_SKYLAKE = 2, ISA_COOPERLAKE = 3, ISA_COUNT = 4 };

/* the bfloat16-cache kernels: widening (b16) everywhere, VDPBF16PS tiles
   on Cooper Lake */
#define CATTN_TABLE_BF16(nm, is, scr, tl, bq, bk) {                           \
    .isa = #nm, .tile_scratch = scr##_b16_##is, .tile = tl##_b16_##is,      \
    .decode_scratch = decode_scratch_bytes_b16_##is,                        \
    .decode = decode_block_b16_##is, .decode_finish = decode_finish_b16_##is, \
    .block_q = bq, .block_k = bk }

/*
 * The rows of every table, one per ISA level (ISA_*), in one X-macro list:
 * X(name, kernels) with the name the level reports and the instantiation
 * whose kernels it runs.  Cooper Lake runs the Skylake-X kernels except
 * for bfloat16 (tables_bf16 below).  A new ISA is one entry here.
 */
#if CATTN_PORTABLE
#define CATTN_ISAS(X) X(portable, portable)
#elif CATTN_X86_DISPATCH
#define CATTN_ISAS(X) X(generic, generic) X(haswell, haswell) X(skylake, skylake) \
                      X(cooperlake, skylake)
#else
#define CATTN_ISAS(X) X(generic, generic)
#endif

#define CATTN_ROW(name, isa) {CATTN_TABLE(isa, f32), CATTN_TABLE(isa, f64)},
static const cattn_kernels tables[][2] = {CATTN_ISAS(CATTN_ROW)};
#undef CATTN_ROW

/* bfloat16 caches: the widening kernels of each level's own instantiation
   (b16); VDPBF16PS tiles on Cooper Lake */
#if CATTN_PORTABLE
static const cattn_kernels tables_bf16[] = {
    CATTN_TABLE_BF16(portable, portable, scratch_bytes, flash_block, 0, 0)};
#elif CATTN_X86_DISPATCH
static const cattn_kernels tables_bf16[] = {
    CATTN_TABLE_BF16(generic, generic, scratch_bytes, flash_block, 0, 0),
    CATTN_TABLE_BF16(haswell, haswell, scratch_bytes, flash_block, 0, 0),
    CATTN_TABLE_BF16(skylake, skylake, scratch_bytes, flash_block, 0, 0),
    /* 128 x 256 tiles: the V pair interleave and the per-tile steps spread
       over more products; (1,8,2048,2048,64), 1 thread, min of 7:
       64 x 128 154-156 GFLOP/s, 128 x 256 160-163 */
    CATTN_TABLE_BF16(cooperlake, cooperlake, scratch_bytes_dp, flash_block, 128, 256)};
#else
static const cattn_kernels tables_bf16[] = {
    CATTN_TABLE_BF16(generic, generic, scratch_bytes, flash_block, 0, 0)};
#endif

/* int8 K/V decode (decode_q8_impl.h), per (ISA, compute type) */
typedef struct { size_t (*scratch)(const cattn_params *); void (*decode)(const cattn_params *,
    int64_t, int64_t, int64_t, void *, void *, void *, void *); } cattn_q8_decode;
#define CATTN_Q8(isa, ty) {decode_scratch_bytes_q8_##ty##_##isa, decode_block_q8_##ty##_##isa}
#define CATTN_ROW(name, isa) {CATTN_Q8(isa, f32), CATTN_Q8(isa, f64)},
static const cattn_q8_decode q8_decode[][2] = {CATTN_ISAS(CATTN_ROW)};
#undef CATTN_ROW

static int isa_level = -1;   /* an index into tables */

/* The best variant this CPU runs; CATTN_ISA=generic|haswell|skylake|cooperlake
   caps it. */
static int detect_isa(void)
{
    int level = ISA_BASE, cap = ISA_COOPERLAKE;
    const char *force = getenv("CATTN_ISA");
    if (force && strcmp(force, "generic") == 0) cap = ISA_BASE;
    if (force && strcmp(force, "haswell") == 0) cap = ISA_HASWELL;
    if (force && strcmp(force, "skylake") == 0) cap = ISA_SKYLAKE;
#if CATTN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c")) {
        level = ISA_HASWELL;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
            level = ISA_SKYLAKE;
        if (level == ISA_SKYLAKE && __builtin_cpu_supports("avx512bf16"))
            level = ISA_COOPERLAKE;
    }
#endif
    return level < cap ? level : cap;
}

static int get_isa(void)
{
    /* Benign race: every thread computes the same value. */
    int level = isa_level;
    if (level < 0) {
        level = detect_isa();
        isa_level = level;
    }
    return level;
}

cattn_kernels cattn_kernels_for(int is_double, int kv_format)
{
    const int isa = get_isa();
    /* a bfloat16 cache: float32 math; decode widens in registers with the
       variant's own vectors (as a float16 cache does, below) */
    if (kv_format == CATTN_KV_BF16 && !is_double) return tables_bf16[isa];
    cattn_kernels k = tables[isa][is_double ? 1 : 0];
    /* Decode: every format runs the variant's own vectors.  (A float32/64
       cache once ran the 32-byte variant on AVX-512 CPUs, no slower one
       query row at a time; with the GQA rows of a K/V head taken together
       (scores_mq, pv_mq) AVX-512 measured 24 ms against 29-35 at 8
       sequences x 4,096 keys, GQA 32/8, D 128, one thread.) */
    if (kv_format == CATTN_KV_I8) {
        const cattn_q8_decode *q8 = &q8_decode[isa][is_double ? 1 : 0];
        k.decode_scratch = q8->scratch;
        k.decode = q8->decode;
        return k;
    }
    return k;
}

const char *cattn_isa_name(void)
{
    return tables_bf16[get_isa()].isa;   /* Cooper Lake differs in bfloat16 only */
}

int cattn_isa_dispatch_available(void) { return CATTN_X86_DISPATCH; }

/* ---- the paged kernels (paged.h), one table per (ISA, compute type) ---- */
#define CATTN_PAGED_TABLE(isa, ty) {                                        \
    #isa, paged_decode_scratch_##ty##_##isa, paged_decode_##ty##_##isa,     \
    paged_decode_finish_##ty##_##isa, paged_tile_scratch_##ty##_##isa,      \
    paged_tile_##ty##_##isa }

#define CATTN_ROW(name, isa) {CATTN_PAGED_TABLE(isa, f32), CATTN_PAGED_TABLE(isa, f64)},
static const cattn_paged_kernels paged_tables[][2] = {CATTN_ISAS(CATTN_ROW)};
#undef CATTN_ROW
/* bfloat16 pools (float32 math): the widening kernels of each level's
   instantiation (instantiate_bf16.h) */
#define CATTN_ROW(name, isa) CATTN_PAGED_TABLE(isa, b16),
static const cattn_paged_kernels paged_tables_bf16[] = {CATTN_ISAS(CATTN_ROW)};
#undef CATTN_ROW

cattn_paged_kernels cattn_paged_kernels_for(int is_double, int kv_format)
{
    const int isa = get_isa();
    if (kv_format == CATTN_KV_BF16 && !is_double) return paged_tables_bf16[isa];
    return paged_tables[isa][is_double ? 1 : 0];
}
