/*
 * internal.h - what the C files share and the Python side never sees: the OpenMP macros,
 * the row-major GEMM helpers over the BLAS pointer table, and the per-step contexts that the
 * sequence driver (seq.c) hands to the cell kernels (lstm.c).
 */
#ifndef LSTMC_INTERNAL_H
#define LSTMC_INTERNAL_H

#include "lstmc.h"

#ifdef _OPENMP
#include <omp.h>
#define LSTMC_STR(x) #x
#define LSTMC_OMP(x) _Pragma(LSTMC_STR(omp x))
#else
#define LSTMC_OMP(x)
#endif

/* Elementwise passes go parallel only above this many scalar updates: below it the fork/join
 * costs more than the work (a parallel region costs a few microseconds). */
#define LSTMC_PAR_MIN_WORK 16384

/* Units per work item of an elementwise pass: keeps a row's gate slices in one cache line run
 * and gives 2 threads enough items at B = 1 and H >= 128. */
#define LSTMC_UNIT_BLOCK 64

/* Row-major C = alpha * op(A) op(B) + beta * C, with op(X) = X or X^T (trans flags 0 / 1).
 * A is (M, K) after op, B is (K, N) after op; lda/ldb/ldc are row strides. M or N of 0 is a
 * no-op; K of 0 scales C by beta. */
void lstmc_gemm_f32(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);
void lstmc_gemm_f64(int transa, int transb, int M, int N, int K, double alpha, const double *A,
                    int lda, const double *B, int ldb, double beta, double *C, int ldc);
int lstmc_blas_ready(void);

/* The per-step contexts, one per dtype (dtype.h picks the names). */
#define LSTMC_STEP_STRUCT(real, name)                                                             \
    typedef struct {                                                                              \
        int n, H, threads;                                                                        \
        const int *pos;      /* (n) packed row of each running row j */                          \
        real *gates;         /* (N, G*H) input projection; a training forward keeps the          \
                                activated gates here */                                          \
        const real *gh;      /* (n, G*H) recurrent projection of this step */                    \
        const real *bias;    /* (G*H) b_ih + b_hh, or NULL */                                     \
        real *c;             /* (B, H) cell state, updated in place */                            \
        real *h;             /* (B, H) receives o * tanh(c) */                                    \
        real *c_saved;       /* (N, H) c after the step, or NULL (inference) */                   \
        real *cprev_saved;   /* (N, H) c before the step, or NULL */                              \
        /* backward only */                                                                       \
        real *dgates;        /* (N, G*H) gradient of the pre-activation gates */                  \
        real *dgates_step;   /* (n, G*H) the same rows, contiguous, for the recurrent GEMM */     \
        const real *dh;      /* (n, H) gradient of o * tanh(c) */                                 \
        real *dc;            /* (B, H) gradient of c, carried from step to step in place */      \
    } name;
LSTMC_STEP_STRUCT(float, lstmc_step_f32)
LSTMC_STEP_STRUCT(double, lstmc_step_f64)

void lstmc_lstm_step_forward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_forward_f64(const lstmc_step_f64 *st);
void lstmc_lstm_step_backward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_backward_f64(const lstmc_step_f64 *st);

#endif /* LSTMC_INTERNAL_H */
