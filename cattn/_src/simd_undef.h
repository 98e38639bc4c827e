/* Ends one instantiation: the names simd_*.h and simd_math.h defined. */
#undef V
#undef CATTN_HAVE_SCALEF
#undef CATTN_HAVE_T32
#undef VU
#undef VI
#undef VL
#undef VMASK
#undef VLANE
#undef CATTN_NREGS
#undef vload
#undef vstore
#undef vset1
#undef vsel
#undef vbits
#undef vfrom
#undef vmax
#undef vmin
#undef vclamp
#undef hsum
#undef hsum4
#undef vload_h
#undef vload_i8
#undef vstore_bf16
#undef vexp
#undef vtanh
#undef imax
#undef imin
/* and the kernels' shared layout names (flash_impl.h; the paged and
   bfloat16 kernels of the same instantiation use them too) */
#undef NOFF
#undef WELEMS
#undef WIDE
