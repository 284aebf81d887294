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

/* Cell kernels are compiled twice where the compiler can dispatch at run time: for x86-64-v3
 * (AVX2 + FMA: 8 floats a vector) and for the baseline (SSE2), and the loader picks one by
 * the CPU (GCC target_clones, an ifunc). A portable build so still runs the wide kernels.
 * With vmath.h's activations, one thread, float32, on the CI machine kind (AVX2):
 * LSTM I256 H256 B32 T150 forward 254 -> 148 ms, training step 530 -> 420 ms; GRU forward
 * 170 -> 85 ms (libm's expm1f/tanhf were a third of the forward's profile). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(LSTMC_NO_DISPATCH)
#define LSTMC_DISPATCH __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LSTMC_DISPATCH
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

/* The per-step context the driver hands a cell kernel, one per dtype. A kernel works on the
 * running rows [0, n) and on one thread's units [u0, u1) only; all of a unit's gates belong to
 * the thread that owns the unit, so kernels need no synchronisation. Each cell file says what
 * it keeps in aux[0] and aux[1]. */
#define LSTMC_STEP_STRUCT(real, name)                                                             \
    typedef struct {                                                                              \
        int cell, n, H, u0, u1;                                                                   \
        const int *off, *lengths; /* with t and reverse: lstmc_row() gives a row's position */   \
        int t, reverse;                                                                           \
        real *gates;         /* (N, G*H) input projection; a training forward keeps the          \
                                activated gates here */                                          \
        const real *gh;      /* (B, G*H) recurrent projection of this step */                    \
        const real *bias_i;  /* (G*H) b_ih (zeros without bias) */                                \
        const real *bias_h;  /* (G*H) b_hh (zeros without bias) */                                \
        const real *hp;      /* (B, H) h before the step */                                       \
        real *h;             /* (B, H) h after the step (LSTM: o * tanh(c), before W_hr) */       \
        real *c;             /* (B, H) LSTM cell state, updated in place */                       \
        real *step_aux;      /* (B, H) a cell's between-phase buffer (GRU reset-before: r*h) */  \
        real *aux[2];        /* (N, H) each: what a training forward saves, or NULL */            \
        /* backward only */                                                                       \
        const real *hprev;   /* (N, H) h before each step, as saved by the forward */             \
        real *dgates;        /* (N, G*H) gradient of the input-side pre-activations */            \
        real *dgates_h;      /* (N, G*H) of the recurrent-side ones (== dgates unless GRU) */     \
        real *dgates_step;   /* (B, G*H) this step's recurrent-side rows, for the GEMM */         \
        const real *dh;      /* (B, H) gradient of h (LSTM: of o * tanh(c)) */                    \
        real *dc;            /* (B, H) LSTM: gradient of c, carried in place */                   \
        real *dh_direct;     /* (B, H) GRU: the part of dh_prev that skips W_hh */                \
        const real *dstep_aux; /* (B, H) GRU reset-before: gradient of r*h */                     \
    } name;
LSTMC_STEP_STRUCT(float, lstmc_step_f32)
LSTMC_STEP_STRUCT(double, lstmc_step_f64)

/* Cell kernels. Two-phase cells (GRU reset-before) run phase 0, then the driver's GEMM of the
 * remaining gate blocks, then phase 1. */
#define LSTMC_CELL_KERNELS(sfx)                                                                   \
    void lstmc_lstm_step_forward_##sfx(const lstmc_step_##sfx *st);                               \
    void lstmc_lstm_step_backward_##sfx(const lstmc_step_##sfx *st);                              \
    void lstmc_gru_step_forward_##sfx(const lstmc_step_##sfx *st, int phase);                     \
    void lstmc_gru_step_backward_##sfx(const lstmc_step_##sfx *st, int phase);                    \
    void lstmc_rnn_step_forward_##sfx(const lstmc_step_##sfx *st);                                \
    void lstmc_rnn_step_backward_##sfx(const lstmc_step_##sfx *st);
LSTMC_CELL_KERNELS(f32)
LSTMC_CELL_KERNELS(f64)

/* Pins the BLAS to one thread while lstmc runs (its own threads share the work), and
 * restores the caller's setting when the last concurrent call leaves. */
void lstmc_blas_enter(void);
void lstmc_blas_leave(void);

#endif /* LSTMC_INTERNAL_H */
