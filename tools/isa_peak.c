/*
 * The issue rate of one core's widest multiply-add instructions: the
 * ceiling that no kernel, cattn's or a GEMM library's, can pass.
 *
 *     gcc -O2 tools/isa_peak.c -o isa_peak && ./isa_peak
 *
 * float32: VFMADD231PS zmm (16 lanes, 32 flops); bfloat16: VDPBF16PS zmm
 * (16 lanes of a pair, 64 flops).  24 independent accumulators, so neither
 * instruction's latency bounds the loop, only its throughput.  Prints
 * GFLOP/s, best of three runs of about a second each.  Needs AVX-512F
 * and AVX512_BF16 (it exits with a message otherwise).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define NACC 24

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))
static double rate_dpbf16(long n)
{
    __m512 a[NACC];
    for (int i = 0; i < NACC; i++) a[i] = _mm512_set1_ps((float)i);
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f003f00);
    double t = now();
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 24
        for (int i = 0; i < NACC; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));   /* keeps the loop from being folded */
    }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < NACC; i++) s += _mm512_reduce_add_ps(a[i]);
    if (s == 1.2345f) printf(" ");
    return NACC * (double)n * 64 / t / 1e9;
}

__attribute__((target("avx512f,fma")))
static double rate_fma(long n)
{
    __m512 a[NACC];
    for (int i = 0; i < NACC; i++) a[i] = _mm512_set1_ps((float)i);
    __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f);
    double t = now();
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 24
        for (int i = 0; i < NACC; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < NACC; i++) s += _mm512_reduce_add_ps(a[i]);
    if (s == 1.2345f) printf(" ");
    return NACC * (double)n * 32 / t / 1e9;
}

int main(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        printf("needs AVX-512F and AVX512_BF16\n");
        return 1;
    }
    double f = 0, b = 0;
    for (int r = 0; r < 3; r++) {
        const double x = rate_fma(20000000), y = rate_dpbf16(20000000);
        f = x > f ? x : f;
        b = y > b ? y : b;
    }
    printf("one core: float32 VFMADD231PS %.1f GFLOP/s, bfloat16 VDPBF16PS %.1f GFLOP/s\n", f, b);
    return 0;
}
