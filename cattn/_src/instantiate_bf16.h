/*
 * The bfloat16-cache kernels of one ISA (T float, K and V stored as
 * bfloat16, kv_format CATTN_KV_BF16): flash_impl.h instantiated once more,
 * with its float16 loads (vload_h, half1, half_rows, dot_h, pv_rows_h)
 * reading bfloat16 instead.  Every option and path of the float16 cache
 * therefore holds for bfloat16 by construction: tiles are widened into
 * scratch once (a shift per value), decode widens in registers.
 *
 * Where the ISA has VDPBF16PS (simd_avx512bf16.h sets CATTN_DPBF16),
 * flash_bf16_impl.h replaces the tile path's products by bfloat16 dot
 * products (see there).
 *
 * Names get the suffix _b16_<isa>.  The ISA header's own float16 loader is
 * compiled under another name (vload_f16, unused here) so that simd_bf16.h
 * can define vload_h.
 */
#define T float
#define CATTN_F64 0
#define SUF(name) CATTN_CAT3(name, _b16_, CATTN_ISA)
#define vload_h vload_f16
#include CATTN_SIMD
#undef vload_h
#include "simd_bf16.h"
#define cattn_half_to_float cattn_bf16_to_float
/* the kernels test `kv_format == CATTN_KV_F16` for "a 16-bit cache, widen
   it": here that 16-bit cache is bfloat16 */
#define CATTN_KV_F16 CATTN_KV_BF16
#include "simd_math.h"
#include "kv_q8.h"       /* load_kv_tile's int8 step (unused for bfloat16) */
#ifndef CATTN_DPBF16
#define CATTN_DPBF16 0
#endif
#if CATTN_DPBF16
#include "flash_bf16_hooks.h"
#endif
#include "flash_impl.h"
#if CATTN_DPBF16
#include "flash_bf16_impl.h"
#else
/* bfloat16 page pools: the paged kernels on the widening steps (Cooper
   Lake runs Skylake-X's: flash.c) */
#include "paged_impl.h"
#endif
#undef CATTN_KV_F16
#undef cattn_half_to_float
#include "simd_undef.h"
#undef CATTN_DPBF16
#undef T
#undef CATTN_F64
#undef SUF
