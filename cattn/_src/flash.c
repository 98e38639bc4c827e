/*
 * Instantiates flash_impl.h per element type and per ISA, and picks the ISA
 * variant once at run time.  The default build carries no -march flag: the
 * Haswell (AVX2+FMA+F16C) and Skylake-X (AVX-512) variants are compiled
 * inside target regions and only called when the CPU reports the features.
 * CATTN_ISA=generic|haswell caps the choice (the tests use it to cover
 * every variant on one machine).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "flash.h"
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
    if (p->poll && CATTN_THREAD_NUM() == 0 && p->poll()) {
        *p->stop = 1;
        return 1;
    }
    return 0;
}

/* CATTN_PORTABLE: standard C only, one lane per "vector" (MSVC's C has no
   vector extensions; any compiler can be forced with -DCATTN_PORTABLE=1,
   which the tests use).  Same kernels, same results, scalar speed. */
#ifndef CATTN_PORTABLE
#if defined(_MSC_VER) && !defined(__clang__)
#define CATTN_PORTABLE 1
#else
#define CATTN_PORTABLE 0
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CATTN_UNUSED __attribute__((unused))
#define CATTN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define CATTN_UNUSED
#define CATTN_PREFETCH(p) ((void)(p))
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

/* ---- baseline variants (whatever the compiler targets by default) ---- */
#define CATTN_VBYTES 32
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
#define CATTN_AVX2 1
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
#undef CATTN_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- Skylake-X variants: AVX-512 (F, VL, BW, DQ), 64-byte vectors ---- */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define CATTN_HAVE_F16C 1
#define CATTN_AVX2 1
#undef CATTN_VBYTES
#define CATTN_VBYTES 64

#define T float
#define CATTN_F64 0
#define SUF(name) name##_f32_skylake
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

#define T double
#define CATTN_F64 1
#define SUF(name) name##_f64_skylake
#include "flash_impl.h"
#undef T
#undef CATTN_F64
#undef SUF

#undef CATTN_VBYTES
#undef CATTN_HAVE_F16C
#undef CATTN_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* CATTN_X86_DISPATCH */

/* ---- run-time selection ---- */
typedef void (*block_fn)(const cattn_params *, int64_t, int64_t, void *);

static int isa_level = -1;   /* 0 generic, 1 haswell, 2 skylake */

/* The best variant this CPU runs; CATTN_ISA=generic|haswell|skylake caps it
   (the tests use that to cover every variant on one machine). */
static int detect_isa(void)
{
    int level = 0, cap = 2;
    const char *force = getenv("CATTN_ISA");
    if (force && strcmp(force, "generic") == 0) cap = 0;
    if (force && strcmp(force, "haswell") == 0) cap = 1;
#if CATTN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c")) {
        level = 1;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
            level = 2;
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

const char *cattn_isa_name(void)
{
    static const char *names[] = {"generic", "haswell", "skylake"};
    return CATTN_PORTABLE ? "portable" : names[get_isa()];
}

int cattn_isa_dispatch_available(void) { return CATTN_X86_DISPATCH; }

size_t cattn_scratch_bytes(const cattn_params *p, int is_double)
{
    return is_double ? scratch_bytes_f64_generic(p) : scratch_bytes_f32_generic(p);
}


size_t cattn_decode_scratch_bytes(const cattn_params *p, int is_double)
{
    return is_double ? decode_scratch_bytes_f64_generic(p) : decode_scratch_bytes_f32_generic(p);
}

#if CATTN_X86_DISPATCH
#define CATTN_DISPATCH(fn, suffix, args) \
    do { int isa_ = get_isa(); \
         if (isa_ == 2) { fn##_##suffix##_skylake args; return; } \
         if (isa_ == 1) { fn##_##suffix##_haswell args; return; } \
         fn##_##suffix##_generic args; } while (0)
#else
#define CATTN_DISPATCH(fn, suffix, args) do { fn##_##suffix##_generic args; } while (0)
#endif

void cattn_flash_block_f32(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{ CATTN_DISPATCH(flash_block, f32, (p, b, qb, scratch)); }

void cattn_flash_block_f64(const cattn_params *p, int64_t b, int64_t qb, void *scratch)
{ CATTN_DISPATCH(flash_block, f64, (p, b, qb, scratch)); }

/* Decode streams memory.  A float32/64 cache uses the 32-byte (Haswell)
   variant on AVX-512 CPUs too (measured no slower, and no AVX-512 clock
   drop on older Intel parts); a float16 cache uses AVX-512 where present:
   widening 16 halves per instruction instead of 8 made it 1.2x faster
   (float16 decode is compute-bound on one core). */
#if CATTN_X86_DISPATCH
#define CATTN_DISPATCH_STREAM(fn, suffix, args) \
    do { int isa_ = get_isa(); \
         if (isa_ == 2 && p->kv_half) { fn##_##suffix##_skylake args; return; } \
         if (isa_ >= 1) { fn##_##suffix##_haswell args; return; } \
         fn##_##suffix##_generic args; } while (0)
#else
#define CATTN_DISPATCH_STREAM CATTN_DISPATCH
#endif

void cattn_decode_block_f32(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            float *acc, float *mm, float *ll, void *scratch)
{ CATTN_DISPATCH_STREAM(decode_block, f32, (p, b, js, je, acc, mm, ll, scratch)); }

void cattn_decode_block_f64(const cattn_params *p, int64_t b, int64_t js, int64_t je,
                            double *acc, double *mm, double *ll, void *scratch)
{ CATTN_DISPATCH_STREAM(decode_block, f64, (p, b, js, je, acc, mm, ll, scratch)); }

void cattn_decode_finish_f32(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const float *acc, const float *mm, const float *ll)
{ CATTN_DISPATCH(decode_finish, f32, (p, b, i, n_split, acc, mm, ll)); }

void cattn_decode_finish_f64(const cattn_params *p, int64_t b, int64_t i, int64_t n_split,
                             const double *acc, const double *mm, const double *ll)
{ CATTN_DISPATCH(decode_finish, f64, (p, b, i, n_split, acc, mm, ll)); }
