/*
 * Instantiates flash_impl.h per element type and per ISA, and picks the ISA
 * variant once at run time.  The default build carries no -march flag: the
 * Haswell (AVX2+FMA+F16C) variants are compiled inside a target region and only
 * called when the CPU reports both features.  CATTN_ISA=generic forces the
 * baseline variant (the tests use it to cover that path).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "flash.h"
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define CATTN_X86_DISPATCH 1
#else
#define CATTN_X86_DISPATCH 0
#endif

/* ---- baseline variants (whatever the compiler targets by default) ---- */
#define T float
#define CATTN_F64 0
#define SUF(name) name##_f32_generic
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

#define T double
#define CATTN_F64 1
#define SUF(name) name##_f64_generic
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

/* ---- Haswell variants: AVX2 + FMA ---- */
#if CATTN_X86_DISPATCH
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define CATTN_HAVE_F16C 1
#define T float
#define CATTN_F64 0
#define SUF(name) name##_f32_haswell
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

#define T double
#define CATTN_F64 1
#define SUF(name) name##_f64_haswell
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

#undef CATTN_HAVE_F16C
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* CATTN_X86_DISPATCH */

/* ---- run-time selection ---- */
typedef void (*block_fn)(const cattn_params *, int64_t, int64_t, void *);

static int isa_level = -1;   /* 0 generic, 1 haswell */

static int detect_isa(void)
{
    const char *force = getenv("CATTN_ISA");
    if (force && strcmp(force, "generic") == 0) return 0;
#if CATTN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c")) return 1;
#endif
    return 0;
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

const char *cattn_isa_name(void) { return get_isa() == 1 ? "haswell" : "generic"; }

int cattn_isa_dispatch_available(void) { return CATTN_X86_DISPATCH; }

size_t cattn_scratch_bytes(const cattn_params *p, int is_double)
{
    return is_double ? scratch_bytes_f64_generic(p) : scratch_bytes_f32_generic(p);
}

void cattn_flash_block_f32(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{
#if CATTN_X86_DISPATCH
    if (get_isa() == 1) { flash_block_f32_haswell(p, b, qb, scratch); return; }
#endif
    flash_block_f32_generic(p, b, qb, scratch);
}

void cattn_flash_block_f64(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{
#if CATTN_X86_DISPATCH
    if (get_isa() == 1) { flash_block_f64_haswell(p, b, qb, scratch); return; }
#endif
    flash_block_f64_generic(p, b, qb, scratch);
}

size_t cattn_decode_scratch_bytes(const cattn_params *p, int is_double)
{
    return is_double ? decode_scratch_bytes_f64_generic(p) : decode_scratch_bytes_f32_generic(p);
}

#if CATTN_X86_DISPATCH
#define CATTN_DISPATCH(fn, suffix, args) \
    do { if (get_isa() == 1) { fn##_##suffix##_haswell args; return; } \
         fn##_##suffix##_generic args; } while (0)
#else
#define CATTN_DISPATCH(fn, suffix, args) do { fn##_##suffix##_generic args; } while (0)
#endif

void cattn_decode_block_f32(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            float *acc, float *mm, float *ll, void *scratch)
{ CATTN_DISPATCH(decode_block, f32, (p, b, js, je, acc, mm, ll, scratch)); }

void cattn_decode_block_f64(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            double *acc, double *mm, double *ll, void *scratch)
{ CATTN_DISPATCH(decode_block, f64, (p, b, js, je, acc, mm, ll, scratch)); }

void cattn_decode_finish_f32(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const float *acc, const float *mm, const float *ll)
{ CATTN_DISPATCH(decode_finish, f32, (p, b, i, n_split, acc, mm, ll)); }

void cattn_decode_finish_f64(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const double *acc, const double *mm, const double *ll)
{ CATTN_DISPATCH(decode_finish, f64, (p, b, i, n_split, acc, mm, ll)); }
