/*
 * dtype.h - included (repeatedly) by the *.inc kernel bodies to stamp them out once per
 * dtype: with LSTMC_F64 defined it names everything for double, otherwise for float.
 *   real      the element type
 *   F(name)   name_f32 / name_f64
 *   GEMM      the row-major GEMM helper of that type
 *   SIGMOID, TANH  the activations: vmath.h's vectorisable ones for float, libm for double
 *                  (no fast-math anywhere: NaN and rounding stay IEEE)
 *   EXP, LOG1P     libm's, of that type (the general steps' other activations)
 *   PACKED_GEMM_FAST(kernel, ...), PACK_GATES_FAST  the SIMD packed kernels and their packing
 *                  (recur.c; float64 has the portable ones only)
 */
#undef real
#undef F
#undef F_
#undef GEMM
#undef SIGMOID
#undef TANH
#undef EXP
#undef LOG1P
#undef PACKED_GEMM_FAST
#undef PACK_GATES_FAST
#ifdef LSTMC_F64
#define real double
#define F_(name) name##_f64
#define SIGMOID(x) (1 / (1 + exp(-(x))))
#define TANH tanh
#define EXP exp
#define LOG1P log1p
#define PACKED_GEMM_FAST(kernel, ...) lstmc_packed_gemm_c_f64(__VA_ARGS__)
#define PACK_GATES_FAST lstmc_pack_gates_f64
#else
#define real float
#define F_(name) name##_f32
#define SIGMOID lstmc_sigmoidf
#define TANH lstmc_tanhf
#define EXP expf
#define LOG1P log1pf
#define PACKED_GEMM_FAST lstmc_packed_gemm_simd_f32
#define PACK_GATES_FAST lstmc_pack_gates_avx2_f32
#endif
#define F(name) F_(name)
#define GEMM F(lstmc_gemm)
