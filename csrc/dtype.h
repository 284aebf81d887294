/*
 * dtype.h - included (repeatedly) by the *.inc kernel bodies to stamp them out once per
 * dtype: with LSTMC_F64 defined it names everything for double, otherwise for float.
 *   real      the element type
 *   F(name)   name_f32 / name_f64
 *   GEMM      the row-major GEMM helper of that type
 *   SIGMOID, TANH  the activations: vmath.h's vectorisable ones for float, libm for double
 *                  (no fast-math anywhere: NaN and rounding stay IEEE)
 */
#undef real
#undef F
#undef F_
#undef GEMM
#undef SIGMOID
#undef TANH
#ifdef LSTMC_F64
#define real double
#define F_(name) name##_f64
#define SIGMOID(x) (1 / (1 + exp(-(x))))
#define TANH tanh
#else
#define real float
#define F_(name) name##_f32
#define SIGMOID lstmc_sigmoidf
#define TANH lstmc_tanhf
#endif
#define F(name) F_(name)
#define GEMM F(lstmc_gemm)
