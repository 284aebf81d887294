/*
 * blas.c - row-major GEMM over the BLAS pointer table.
 *
 * BLAS is column-major; a row-major (M, N) matrix is the column-major (N, M) matrix of its
 * transpose, so row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: call gemm
 * with the operands swapped. This is the only place that knows it.
 *
 * Products with few rows (the recurrent step at small batch) go to gemv, one call per row:
 * OpenBLAS's gemm repacks the whole weight matrix on every call, which at one row costs 8x
 * the gemv (sgemm (1 x 512) x (512 x 2048): 830 us vs 98 us at one thread; gemm wins from
 * about 16 rows on; measured with scipy's OpenBLAS 0.3.30 on the 2-core CI machine kind;
 * docs/decisions.md#gemv).
 */
#include <string.h>
#include "internal.h"

#define LSTMC_GEMV_MAX_ROWS 8

static lstmc_sgemm_fn sgemm_ptr = NULL;
static lstmc_dgemm_fn dgemm_ptr = NULL;
static lstmc_sgemv_fn sgemv_ptr = NULL;
static lstmc_dgemv_fn dgemv_ptr = NULL;

void lstmc_set_blas(lstmc_sgemm_fn sgemm, lstmc_dgemm_fn dgemm, lstmc_sgemv_fn sgemv,
                    lstmc_dgemv_fn dgemv)
{
    sgemm_ptr = sgemm;
    dgemm_ptr = dgemm;
    sgemv_ptr = sgemv;
    dgemv_ptr = dgemv;
}

int lstmc_blas_ready(void) { return sgemm_ptr && dgemm_ptr && sgemv_ptr && dgemv_ptr; }

static lstmc_get_threads_fn blas_get_threads = NULL;
static lstmc_set_threads_fn blas_set_threads = NULL;
#ifdef _OPENMP
static int blas_users = 0, blas_saved_threads = 1;
#endif

void lstmc_set_blas_threads_api(lstmc_get_threads_fn get, lstmc_set_threads_fn set)
{
    blas_get_threads = get;
    blas_set_threads = set;
}

/* Concurrent calls (Python threads) count in (+1) and out (-1); the first one in pins the
 * BLAS to one thread, the last one out restores what it found. Serial builds leave the BLAS
 * alone: there the calling thread is the only lstmc thread, and the BLAS may use its own. */
static void blas_count(int delta)
{
#ifdef _OPENMP
    if (!blas_get_threads || !blas_set_threads)
        return;
    LSTMC_OMP(critical(lstmc_blas_threads))
    {
        if (delta > 0 && blas_users++ == 0) {
            blas_saved_threads = blas_get_threads();
            if (blas_saved_threads != 1)
                blas_set_threads(1);
        } else if (delta < 0 && --blas_users == 0 && blas_saved_threads != 1)
            blas_set_threads(blas_saved_threads);
    }
#else
    (void)delta;
#endif
}

void lstmc_blas_enter(void) { blas_count(1); }
void lstmc_blas_leave(void) { blas_count(-1); }

/* Row j of C is op(B)^T a_j with a_j row j of op(A). In BLAS's column-major view the stored
 * B is (N, K) when transb = 0 (so op(B)^T is it, 'N') and (K, N) when transb = 1 ('T'). */
#define DEFINE_GEMM(real, sfx, fn, gemv)                                                       \
    void lstmc_gemm_##sfx(int transa, int transb, int M, int N, int K, real alpha,              \
                          const real *A, int lda, const real *B, int ldb, real beta, real *C,   \
                          int ldc)                                                              \
    {                                                                                           \
        if (M <= 0 || N <= 0)                                                                   \
            return;                                                                             \
        if (K <= 0) { /* BLAS would reject lda < 1; the product is empty: C = beta C */         \
            for (int i = 0; i < M; i++)                                                         \
                for (int j = 0; j < N; j++)                                                     \
                    C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];      \
            return;                                                                             \
        }                                                                                       \
        if (M <= LSTMC_GEMV_MAX_ROWS) {                                                         \
            char tr = transb ? 'T' : 'N';                                                       \
            lstmc_blas_int m = transb ? K : N, n = transb ? N : K, la = ldb, one = 1;           \
            lstmc_blas_int inc = transa ? lda : 1;                                              \
            for (int j = 0; j < M; j++) {                                                       \
                /* some OpenBLAS versions scale y by beta = 0 as 0 * y: NaN in y would stay */   \
                if (beta == 0)                                                                  \
                    memset(C + (size_t)j * ldc, 0, (size_t)N * sizeof(real));                    \
                gemv(&tr, &m, &n, &alpha, (real *)B, &la,                                       \
                     (real *)(transa ? A + j : A + (size_t)j * lda), &inc, &beta,               \
                     C + (size_t)j * ldc, &one);                                                \
            }                                                                                   \
            return;                                                                             \
        }                                                                                       \
        char ta = transb ? 'T' : 'N', tb = transa ? 'T' : 'N';                                  \
        lstmc_blas_int m = N, n = M, k = K, la = ldb, lb = lda, lc = ldc;                       \
        fn(&ta, &tb, &m, &n, &k, &alpha, (real *)B, &la, (real *)A, &lb, &beta, C, &lc);        \
    }
DEFINE_GEMM(float, f32, sgemm_ptr, sgemv_ptr)
DEFINE_GEMM(double, f64, dgemm_ptr, dgemv_ptr)
