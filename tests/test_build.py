"""The C kernels are C99 and compile without a single warning, with and without OpenMP."""
import os
import re
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SOURCES = ["blas.c", "seq.c", "lstm.c", "gru.c", "rnn.c", "recur.c", "quant.c", "quant_bf16.c"]
FLAGS = ["-std=c99", "-O3", "-fno-trapping-math", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion",
         "-Wno-sign-conversion", "-Werror", "-c"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
@pytest.mark.parametrize("openmp", [False, True])
@pytest.mark.parametrize("source", SOURCES)
def test_kernels_compile_without_warnings(tmp_path, source, openmp):
    cmd = ["gcc", *FLAGS, *(["-fopenmp"] if openmp else []), os.path.join(CSRC, source),
           "-o", str(tmp_path / "out.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
def test_kernels_need_no_python_headers():
    for name in os.listdir(CSRC):
        with open(os.path.join(CSRC, name)) as f:
            assert not re.search(r'#\s*include\s*[<"]Python\.h', f.read()), name


# Runs sequences from inside a parallel region of its own, as a C program using lstmc may:
# every outer thread one sequence of its own length (3 or 4 steps, so their barriers differ),
# with a naive BLAS; each result must equal the same call's outside any region.
CALLER_IN_A_REGION = r"""
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lstmc.h"
#define GEMM(real) { int M = *m, N = *n, K = *k, at = *ta == 'T', bt = *tb == 'T';              \
    for (int j = 0; j < N; j++) for (int i = 0; i < M; i++) { real s = 0;                    \
        for (int p = 0; p < K; p++)                                                          \
            s += (at ? a[p + i * *lda] : a[i + p * *lda]) * (bt ? b[j + p * *ldb] : b[p + j * *ldb]); \
        c[i + j * *ldc] = *alpha * s + (*beta == 0 ? 0 : *beta * c[i + j * *ldc]); } }
#define GEMV(real) { int len = *t == 'T' ? *n : *m, kl = *t == 'T' ? *m : *n;                \
    for (int i = 0; i < len; i++) { real s = 0;                                              \
        for (int p = 0; p < kl; p++) s += (*t == 'T' ? a[p + i * *lda] : a[i + p * *lda]) * x[p * *incx]; \
        y[i * *incy] = *alpha * s + (*beta == 0 ? 0 : *beta * y[i * *incy]); } }
static void sgemm(char *ta, char *tb, int *m, int *n, int *k, float *alpha, float *a, int *lda,
                  float *b, int *ldb, float *beta, float *c, int *ldc) GEMM(float)
static void dgemm(char *ta, char *tb, int *m, int *n, int *k, double *alpha, double *a, int *lda,
                  double *b, int *ldb, double *beta, double *c, int *ldc) GEMM(double)
static void sgemv(char *t, int *m, int *n, float *alpha, float *a, int *lda, float *x, int *incx,
                  float *beta, float *y, int *incy) GEMV(float)
static void dgemv(char *t, int *m, int *n, double *alpha, double *a, int *lda, double *x,
                  int *incx, double *beta, double *y, int *incy) GEMV(double)
enum { I = 8, H = 64, TMAX = 4 };
static void run(int T, const float *x, const float *params, float *y)
{
    int batch_sizes[TMAX] = {1, 1, 1, 1}, lengths[1] = {T};
    lstmc_seq s = {LSTMC_CELL_LSTM, T, 1, I, H, 0, 1, 1, 1, batch_sizes, lengths};
    float hn[H], cn[H];
    float *scratch = aligned_alloc(64, (lstmc_seq_scratch_size(&s, 0) * 4 + 63) / 64 * 64);
    if (lstmc_seq_forward_f32(y, hn, cn, NULL, x, NULL, NULL, NULL, NULL, params, NULL, scratch, &s))
        exit(2);
    free(scratch);
}
int main(void)
{
    lstmc_set_blas((lstmc_sgemm_fn)sgemm, (lstmc_dgemm_fn)dgemm, (lstmc_sgemv_fn)sgemv,
                   (lstmc_dgemv_fn)dgemv);
    static float params[4 * H * (I + H + 2)], x[TMAX * I], serial[2][TMAX * H], inside[2][TMAX * H];
    srand(1);
    for (size_t i = 0; i < sizeof params / sizeof *params; i++)
        params[i] = (rand() / (float)RAND_MAX - 0.5f) * 0.3f;
    for (int i = 0; i < TMAX * I; i++)
        x[i] = rand() / (float)RAND_MAX - 0.5f;
    for (int k = 0; k < 2; k++)
        run(TMAX - k, x, params, serial[k]);
    #pragma omp parallel num_threads(2)
    {
        const int k = omp_get_thread_num();
        run(TMAX - k, x, params, inside[k]);
    }
    for (int k = 0; k < 2; k++)
        if (memcmp(serial[k], inside[k], (size_t)(TMAX - k) * H * sizeof(float))) {
            printf("sequence %d differs\n", k);
            return 1;
        }
    printf("ok\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
def test_calls_from_inside_a_callers_parallel_region(tmp_path):
    """A call whose own team is one thread, made from a thread of the caller's OpenMP team,
    computes all of its units and waits for no thread of the caller's (csrc/internal.h,
    LSTMC_TEAM): running the body directly there gave each call part of the units (max |dy|
    0.14) or hung when the outer threads ran sequences of different lengths."""
    src = tmp_path / "caller.c"
    src.write_text(CALLER_IN_A_REGION)
    exe = tmp_path / "caller"
    build = subprocess.run(["gcc", "-std=c11", "-O1", "-fopenmp", f"-I{CSRC}", str(src),
                            *[os.path.join(CSRC, s) for s in SOURCES], "-lm", "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout)
