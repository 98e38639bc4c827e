/*
 * One ISA's kernels for float and double.  The including file sets
 * CATTN_ISA (the variant's name, e.g. haswell) and CATTN_SIMD (its
 * primitives header, e.g. "simd_avx2.h") and opens the ISA's target region
 * (flash.c); this file instantiates flash_impl.h on those primitives.
 */
#define CATTN_CAT3_(a, b, c) a##b##c
#define CATTN_CAT3(a, b, c) CATTN_CAT3_(a, b, c)

#define T float
#define CATTN_F64 0
#define SUF(name) CATTN_CAT3(name, _f32_, CATTN_ISA)
#include CATTN_SIMD
#include "simd_math.h"
#include "kv_q8.h"
#include "flash_impl.h"
#include "flash_bwd_impl.h"
#include "decode_q8_impl.h"
#include "paged_impl.h"
#include "simd_undef.h"
#undef T
#undef CATTN_F64
#undef SUF

#define T double
#define CATTN_F64 1
#define SUF(name) CATTN_CAT3(name, _f64_, CATTN_ISA)
#include CATTN_SIMD
#include "simd_math.h"
#include "kv_q8.h"
#include "flash_impl.h"
#include "flash_bwd_impl.h"
#include "decode_q8_impl.h"
#include "paged_impl.h"
#include "simd_undef.h"
#undef T
#undef CATTN_F64
#undef SUF

/* and the bfloat16-cache kernels (float32 math) */
#include "instantiate_bf16.h"
