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

/* Units of a thread's share are multiples of this (one AVX-512 vector of floats), so shares
 * start on vector boundaries of every gate block. */
#define LSTMC_UNIT_ALIGN 16

/* Below this much recurrent work per step (rows x gate columns x h width) one thread is
 * faster: a barrier per step costs about a microsecond. */
#define LSTMC_PAR_MIN_STEP_WORK 65536

/* Row-major C = alpha * op(A) op(B) + beta * C, with op(X) = X or X^T (trans flags 0 / 1).
 * A is (M, K) after op, B is (K, N) after op; lda/ldb/ldc are row strides. M or N of 0 is a
 * no-op; K of 0 scales C by beta. */
void lstmc_gemm_f32(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);
void lstmc_gemm_f64(int transa, int transb, int M, int N, int K, double alpha, const double *A,
                    int lda, const double *B, int ldb, double beta, double *C, int ldc);
int lstmc_blas_ready(void);

/* Packed row of running row j at processing step t (see lstmc.h): the forward direction
 * reads time t, the reverse direction row j's own valid prefix backwards. */
static inline size_t lstmc_row(const int *off, const int *lengths, int t, int reverse, int j)
{
    return (size_t)off[reverse ? lengths[j] - 1 - t : t] + (size_t)j;
}

/* The per-step contexts the driver hands a cell kernel, one per dtype. A kernel works on the
 * running rows [0, n) and on one thread's units [u0, u1) only; all of a unit's gates belong to
 * the thread that owns the unit, so kernels need no synchronisation. */
#define LSTMC_STEP_STRUCT(real, name)                                                             \
    typedef struct {                                                                              \
        int n, H, u0, u1;                                                                         \
        const int *off, *lengths; /* with t and reverse: lstmc_row() gives a row's position */   \
        int t, reverse;                                                                           \
        real *gates;         /* (N, G*H) input projection; a training forward keeps the          \
                                activated gates here */                                          \
        const real *gh;      /* (B, G*H) recurrent projection of this step */                    \
        const real *bias;    /* (G*H) b_ih + b_hh (zeros without bias) */                         \
        real *c;             /* (B, H) cell state, updated in place */                            \
        real *h;             /* (B, H) receives o * tanh(c) */                                    \
        real *c_saved;       /* (N, H) c after the step, or NULL (inference) */                   \
        real *cprev_saved;   /* (N, H) c before the step, or NULL */                              \
        /* backward only */                                                                       \
        real *dgates;        /* (N, G*H) gradient of the pre-activation gates */                  \
        real *dgates_step;   /* (B, G*H) the same rows, contiguous, for the recurrent GEMM */     \
        const real *dh;      /* (B, H) gradient of o * tanh(c) */                                 \
        real *dc;            /* (B, H) gradient of c, carried from step to step in place */      \
    } name;
LSTMC_STEP_STRUCT(float, lstmc_step_f32)
LSTMC_STEP_STRUCT(double, lstmc_step_f64)

void lstmc_lstm_step_forward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_forward_f64(const lstmc_step_f64 *st);
void lstmc_lstm_step_backward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_backward_f64(const lstmc_step_f64 *st);

/* Pins the BLAS to one thread while lstmc runs (its own threads share the work), and
 * restores the caller's setting when the last concurrent call leaves. */
void lstmc_blas_enter(void);
void lstmc_blas_leave(void);

#endif /* LSTMC_INTERNAL_H */
