/*
 * lstmc.h - the C API of lstmc's recurrent kernels (C99, no Python.h).
 *
 * Dimension letters used everywhere:
 *   T = time steps, B = batch rows, I = input width of layer 0, H = hidden units,
 *   P = projection width (LSTM proj_size; 0 = none), Hout = P ? P : H (width of h),
 *   L = layers, D = directions (1 or 2), G = gate blocks per cell (LSTM 4),
 *   N = number of valid (t, b) positions = sum over t of batch_sizes[t].
 *
 * Sequence layout ("packed", as PyTorch's PackedSequence): rows are sorted by length,
 * longest first; step t holds the batch_sizes[t] rows still running, so the active rows of
 * every step are a prefix 0..n_t-1 of the batch. Position (t, j) lives at packed row
 * off[t] + j with off[t] = sum_{s<t} batch_sizes[s]. A dense batch is the special case
 * batch_sizes[t] = B, where the packed layout is plain time-major (T, B, .). Padding is never
 * stored, so it can neither cost compute nor leak NaNs.
 *
 * Parameter layout: one flat buffer, PyTorch's own order and shapes (row-major), for
 * layer l = 0..L-1, then direction d = 0..D-1:
 *   w_ih (G*H, I_l)    I_l = I for l = 0, D*Hout above
 *   w_hh (G*H, Hout)
 *   b_ih (G*H), b_hh (G*H)        only when the descriptor has bias
 *   w_hr (P, H)                   only when P > 0
 *   w_ph (3, H)                   LSTM peepholes, only with options->peepholes
 * with gate blocks of H rows in PyTorch order (LSTM: i, f, g, o). Gradients use the same
 * layout and ACCUMULATE (+=): zeroing them is the caller's one memset.
 *
 * Every entry point returns LSTMC_OK or an error status; none allocates memory. Callers own
 * two workspaces sized by the functions below: `reserve` (what a training forward saves for
 * backward) and `scratch` (reused freely between calls).
 */
#ifndef LSTMC_H
#define LSTMC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- BLAS, reached through pointers (Fortran ABI, column-major) ------------------------ */
#ifdef LSTMC_BLAS_ILP64
typedef int64_t lstmc_blas_int;
#else
typedef int lstmc_blas_int;
#endif

typedef void (*lstmc_sgemm_fn)(char *transa, char *transb, lstmc_blas_int *m, lstmc_blas_int *n,
                               lstmc_blas_int *k, float *alpha, float *a, lstmc_blas_int *lda,
                               float *b, lstmc_blas_int *ldb, float *beta, float *c,
                               lstmc_blas_int *ldc);
typedef void (*lstmc_dgemm_fn)(char *transa, char *transb, lstmc_blas_int *m, lstmc_blas_int *n,
                               lstmc_blas_int *k, double *alpha, double *a, lstmc_blas_int *lda,
                               double *b, lstmc_blas_int *ldb, double *beta, double *c,
                               lstmc_blas_int *ldc);

typedef void (*lstmc_sgemv_fn)(char *trans, lstmc_blas_int *m, lstmc_blas_int *n, float *alpha,
                               float *a, lstmc_blas_int *lda, float *x, lstmc_blas_int *incx,
                               float *beta, float *y, lstmc_blas_int *incy);
typedef void (*lstmc_dgemv_fn)(char *trans, lstmc_blas_int *m, lstmc_blas_int *n, double *alpha,
                               double *a, lstmc_blas_int *lda, double *x, lstmc_blas_int *incx,
                               double *beta, double *y, lstmc_blas_int *incy);

/* Hand the BLAS routines to the kernels once, before any other call. */
void lstmc_set_blas(lstmc_sgemm_fn sgemm, lstmc_dgemm_fn dgemm, lstmc_sgemv_fn sgemv,
                    lstmc_dgemv_fn dgemv);

/* Optionally, the BLAS's own thread-count getter and setter (OpenBLAS'
 * openblas_get_num_threads / openblas_set_num_threads). With OpenMP, lstmc runs the BLAS
 * single-threaded inside its own team of threads while a call is in progress, and restores
 * the BLAS's setting afterwards; without these hooks it trusts the BLAS to be single-threaded
 * (or to detect the OpenMP region). */
typedef int (*lstmc_get_threads_fn)(void);
typedef void (*lstmc_set_threads_fn)(int);
void lstmc_set_blas_threads_api(lstmc_get_threads_fn get, lstmc_set_threads_fn set);

/* ---- status codes ------------------------------------------------------------------------ */
enum {
    LSTMC_OK = 0,
    LSTMC_ERR_ARG = 1,    /* a descriptor field is out of range */
    LSTMC_ERR_NOBLAS = 2, /* lstmc_set_blas was never called */
    LSTMC_ERR_CANCELLED = 3 /* *s->cancel became nonzero: the outputs are incomplete */
};

/* ---- threads ----------------------------------------------------------------------------- */
int lstmc_openmp_enabled(void);       /* 1 if built with OpenMP */
void lstmc_set_num_threads(int n);    /* threads of the elementwise passes (n >= 1) */
int lstmc_get_num_threads(void);
/* The threads an inference call may use while the process is found contended (seq.c, the
 * contention governor: a call whose team lost more than half its time to other tasks, twice
 * in a row, shrinks the team until a later try of a larger one loses less); 0: not capped */
int lstmc_thread_cap(void);
/* Caps inference calls at `cap` threads (0: lifts the cap) as if the process had just been
 * found contended, until a try after the longest back-off: for tests */
void lstmc_set_thread_cap(int cap);

/* The kernel of the recurrent products (forward W_hh h, backward dgates W_hh) at batches of
 * at most 128 rows (larger batches always use BLAS). AUTO runs the widest SIMD kernel the CPU
 * has on float32 (AVX-512, else AVX2/FMA): on the caller's packed copy (lstmc_seq_pack_*),
 * else on W_hh packed per call when the call has at least 8 steps (64 at batch 1), else BLAS.
 * The others force a choice: PACKED_AVX512 falls back to WIDE_AVX2 (the AVX-512 kernel's
 * tiles built for AVX2, which tests their logic on CPUs without AVX-512), the SIMD kernels
 * to PACKED_C without AVX2; float64 packs with PACKED_C. All give the same results up to
 * rounding. For tests and benchmarks; the setting is global. */
enum {
    LSTMC_RECUR_AUTO = 0,
    LSTMC_RECUR_BLAS = 1,           /* gemv per row and gate block on the unpacked weights */
    LSTMC_RECUR_PACKED_C = 2,       /* packed weights, the portable C kernel */
    LSTMC_RECUR_PACKED_AVX2 = 3,    /* packed weights, the AVX2/FMA kernel */
    LSTMC_RECUR_PACKED_AVX512 = 4,  /* packed weights, 16-lane tiles on AVX-512 */
    LSTMC_RECUR_PACKED_WIDE_AVX2 = 5 /* the same 16-lane tiles built for AVX2 */
};
void lstmc_set_recurrent_kernel(int kernel);   /* out-of-range values mean AUTO */
int lstmc_get_recurrent_kernel(void);
/* Which recurrent kernel a call of this dtype (f64: 1 for double), batch and steps runs on
 * this CPU: LSTMC_RECUR_BLAS or one of the packed ones, from the setting above.
 * `prepacked`: the caller has a packed copy (lstmc_seq_pack_*), so packing costs nothing and
 * the step-count threshold does not apply. */
int lstmc_recur_kernel_for(int f64, int batch, int steps, int prepacked);

/* ---- sequences --------------------------------------------------------------------------- */
/* cells: gate blocks G and their PyTorch order
 *   LSTM                4: i, f, g, o
 *   GRU                 3: r, z, n   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
 *   GRU_RESET_BEFORE    3: r, z, n   n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
 *   RNN_TANH, RNN_RELU  1            h' = act(W_ih x + b_ih + W_hh h + b_hh)
 * Only LSTM carries c and may have a projection. */
enum {
    LSTMC_CELL_LSTM = 0,
    LSTMC_CELL_GRU = 1,
    LSTMC_CELL_GRU_RESET_BEFORE = 2,
    LSTMC_CELL_RNN_TANH = 3,
    LSTMC_CELL_RNN_RELU = 4
};

/* which tensor of a layer/direction, for lstmc_seq_param_offset */
enum {
    LSTMC_W_IH = 0, LSTMC_W_HH = 1, LSTMC_B_IH = 2, LSTMC_B_HH = 3, LSTMC_W_HR = 4,
    LSTMC_W_PH = 5   /* LSTM peepholes (3, H): rows p_i, p_f, p_o; with options->peepholes */
};

/* ONNX's activation functions (operator LSTM / GRU / RNN, opset 7-22):
 *   RELU max(0, x)        TANH, SIGMOID            AFFINE alpha x + beta
 *   LEAKY_RELU x >= 0 ? x : alpha x                THRESHOLDED_RELU x > alpha ? x : 0
 *   SCALED_TANH alpha tanh(beta x)                 HARD_SIGMOID min(max(alpha x + beta, 0), 1)
 *   ELU x >= 0 ? x : alpha (e^x - 1)               SOFTSIGN x / (1 + |x|)
 *   SOFTPLUS log(1 + e^x) */
enum {
    LSTMC_ACT_SIGMOID = 0, LSTMC_ACT_TANH = 1, LSTMC_ACT_RELU = 2, LSTMC_ACT_AFFINE = 3,
    LSTMC_ACT_LEAKY_RELU = 4, LSTMC_ACT_THRESHOLDED_RELU = 5, LSTMC_ACT_SCALED_TANH = 6,
    LSTMC_ACT_HARD_SIGMOID = 7, LSTMC_ACT_ELU = 8, LSTMC_ACT_SOFTSIGN = 9,
    LSTMC_ACT_SOFTPLUS = 10
};

/* A cell's options, one per call (NULL in lstmc_seq: the default cell). A call whose options
 * are all defaults runs the default kernels; any other runs each cell's general step (the
 * `_options` kernels), chosen once per call.
 *   act[d][k], alpha[d][k], beta[d][k]   direction d's activation of slot k: LSTM f (gates
 *            i, f, o), g (cell candidate), h (of c in h = o h(c)); GRU f (r, z), g (n);
 *            RNN f. Defaults: LSTM sigmoid, tanh, tanh; GRU sigmoid, tanh; RNN tanh (relu
 *            for LSTMC_CELL_RNN_RELU). alpha and beta as the activation defines them.
 *   clip     > 0: every gate pre-activation (bias and peephole terms included) is clamped to
 *            [-clip, clip] before its activation (ONNX `clip`; c itself is not clipped,
 *            as in ONNX Runtime); 0: none
 *   coupled  LSTM: f = 1 - i (ONNX input_forget; the f block of the weights is unused)
 *   peepholes  LSTM: the parameters carry LSTMC_W_PH per layer and direction (after w_hr),
 *            and i, f read p_i c_prev, p_f c_prev, o reads p_o c (the new c)
 * The backward supports peepholes and clip with the default activations only. */
typedef struct {
    int act[2][3];
    double alpha[2][3], beta[2][3];
    double clip;
    int coupled, peepholes;
} lstmc_cell_options;

typedef struct {
    int cell;                /* LSTMC_CELL_* */
    int steps, batch, input; /* T, B, I */
    int hidden, proj;        /* H, P (0 = no projection) */
    int layers, dirs;        /* L, D */
    int bias;                /* 1 when b_ih / b_hh are present */
    const int *batch_sizes;  /* (T) rows running at step t: non-increasing, <= B */
    const int *lengths;      /* (B) steps of each (sorted, longest first) row:
                                batch_sizes[t] = #{j : lengths[j] > t} */
    const lstmc_cell_options *options;   /* or NULL: the default cell */
    const volatile int *cancel; /* or NULL: once *cancel is nonzero (a signal handler may set
                                   it) the call stops between two steps */
    int recurrent_dropout;   /* 1: a training call with recurrent dropout: the forward and
                                backward take `rmasks` (below); 0: none, rmasks unread */
} lstmc_seq;

/* Checks the descriptor (sizes, monotone batch_sizes consistent with lengths). */
int lstmc_seq_check(const lstmc_seq *s);

size_t lstmc_seq_rows(const lstmc_seq *s);          /* N */
size_t lstmc_seq_param_count(const lstmc_seq *s);   /* elements of the flat parameter buffer */
/* Offset of one tensor in the flat buffer; (size_t)-1 if it does not exist. */
size_t lstmc_seq_param_offset(const lstmc_seq *s, int layer, int dir, int which);
size_t lstmc_seq_reserve_size(const lstmc_seq *s);  /* elements saved by a training forward */
size_t lstmc_seq_scratch_size(const lstmc_seq *s, int train); /* elements of scratch */

/*
 * Forward over the whole sequence, all layers and directions.
 *   y        (N, D*Hout)      packed output of the last layer
 *   hn, cn   (L*D, B, Hout), (L*D, B, H)   final states, sorted row order (cn: LSTM only,
 *            NULL for the other cells)
 *   reserve  lstmc_seq_reserve_size(s) elements, or NULL for inference (stores nothing)
 *   x        (N, I)           packed input
 *   h0, c0   like hn, cn, or NULL for zeros (c0 is ignored by cells without c); hn may be h0
 *            and cn may be c0 (updated in place: each layer reads its h0/c0 before it
 *            writes its hn/cn; nn.LSTM.step relies on this)
 *   masks    (L-1, N, D*Hout) dropout multipliers for the input of layers 1..L-1, or NULL
 *   rmasks   (L, D, G, B, Hout) recurrent dropout multipliers (s->recurrent_dropout: a
 *            training forward only; else NULL): block g of each layer and direction, one
 *            (B, Hout) mask per gate block in PyTorch order (LSTM i, f, g, o; GRU r, z, n;
 *            RNN one), rows in the sorted order, the same at every step. Each block's
 *            recurrent product reads h * rmasks[l, d, g] in place of h (Keras' recurrent
 *            dropout, implementation 1: LSTM gates i, f, c, o, GRU z, r, h each their own
 *            mask); GRU reset-before's r * h reads it too, and only the products do: GRU's
 *            h' = (1 - z) n + z h keeps the unmasked h, as Keras does. The caller's
 *            `packed` copy is not used with them (its gate sets are not per gate).
 *   params   flat parameters (layout above)
 *   packed   lstmc_seq_pack_*'s copy of params, or NULL (see below)
 *   scratch  lstmc_seq_scratch_size(s, reserve != NULL) elements
 */
int lstmc_seq_forward_f32(float *y, float *hn, float *cn, float *reserve,
                          const float *x, const float *h0, const float *c0, const float *masks,
                          const float *rmasks, const float *params, const float *packed,
                          float *scratch, const lstmc_seq *s);
int lstmc_seq_forward_f64(double *y, double *hn, double *cn, double *reserve,
                          const double *x, const double *h0, const double *c0,
                          const double *masks, const double *rmasks, const double *params,
                          const double *packed, double *scratch, const lstmc_seq *s);

/*
 * Packed weights, for callers that run many forwards on the same weights (inference,
 * streaming): W_ih and W_hh of every layer and direction copied once into the order the
 * packed kernels stream (csrc/recur.c), as ONNX Runtime packs its weights when a session is
 * created, and W_ih once more with its rows in the order of the projection's per-thread
 * panels (csrc/internal.h): the copy takes about the parameters' size plus W_ih's. It
 * depends on the cell, I, H, P, L, D and bias of `s` only (not on T, B or lengths) and on no
 * thread count. It goes stale when the parameters change: the caller repacks (or passes
 * NULL) after any write to them.
 *   lstmc_seq_packed_size  elements of the buffer, which must start on a 64-byte boundary
 *   lstmc_seq_pack_*       fills it from the flat parameters
 *   lstmc_seq_packs        1 if a forward of this dtype (f64: 1 for double) would use a packed
 *                          copy under the current recurrent-kernel setting, else 0 (packing
 *                          is then wasted work, though harmless)
 * A forward given `packed` (else NULL) skips its own per-call packing and runs the input
 * projection of small problems (at most LSTMC_PACKED_PROJ_MAX_ROWS positions) through the
 * packed kernel as well; results equal the unpacked forward up to rounding.
 */
size_t lstmc_seq_packed_size(const lstmc_seq *s);
int lstmc_seq_pack_f32(float *packed, const float *params, const lstmc_seq *s);
int lstmc_seq_pack_f64(double *packed, const double *params, const lstmc_seq *s);
int lstmc_seq_packs(int f64);

/*
 * Backward through time after a training forward with the same x, masks, rmasks, params,
 * reserve.
 *   dx        (N, I)          written (not accumulated)
 *   dh0, dc0  like h0, c0     written (dc0: LSTM only, NULL otherwise)
 *   dparams   flat gradients  ACCUMULATED
 *   dy        (N, D*Hout)     gradient of y
 *   dhn, dcn  like hn, cn, or NULL for zeros
 *   reserve   read only: backward may run again on the same forward (gradients add up)
 */
int lstmc_seq_backward_f32(float *dx, float *dh0, float *dc0, float *dparams,
                           const float *reserve,
                           const float *dy, const float *dhn, const float *dcn,
                           const float *x, const float *masks, const float *rmasks,
                           const float *params, float *scratch, const lstmc_seq *s);
int lstmc_seq_backward_f64(double *dx, double *dh0, double *dc0, double *dparams,
                           const double *reserve, const double *dy, const double *dhn,
                           const double *dcn, const double *x, const double *masks,
                           const double *rmasks, const double *params, double *scratch,
                           const lstmc_seq *s);

/*
 * int8 products (quant.c; the arithmetic of lstmc/reference.py quantize_int8 / int8_product):
 * C[j, col] = ((float)sum_k q_a[j, k] q_w[n, k] * a_scale[j]) * w_scale[n], exact int32 sums,
 * for the gate units n = g H + u of the gate blocks [g0, g1) and units [u0, u1), col as in
 * the float packed kernels (g * gstep + (b - u0) * bscale + l). Weights: int8 in [-127, 127]
 * per row (G H, K) with float32 scales, packed by lstmc_q8_pack_gates (its layout in
 * quant.c); activations: rows of lstmc_q8_row_bytes(K) bytes, q + 128, from
 * lstmc_q8_quantize_rows. K at most LSTMC_Q8_MAX_K (the sums stay in int32).
 */
#define LSTMC_Q8_MAX_K (1 << 17)
/*
 * A quantized forward (inference), qtype LSTMC_QT_INT8 or LSTMC_QT_BF16:
 * lstmc_seq_forward_f32's y, hn, cn, x, h0, c0 and params (its biases; its W_ih and W_hh are
 * not read) with the weights from qw, lstmc_seq_qsize(s, qtype) bytes: per layer and
 * direction W_ih (K = I_l) and W_hh (K = Hout), each packed (lstmc_q8_pack_gates or
 * lstmc_bf16_pack_gates) as one set of all G gate blocks at lstmc_seq_qoffset(s, qtype, l, d,
 * LSTMC_W_IH or LSTMC_W_HH). Layer inputs are quantized per row (int8) or rounded to bf16;
 * h likewise after every step, int8 with the static scale 1/127, so int8 runs only cells
 * whose h stays within [-1, 1] (LSTM without projection, GRU reset-after, RNN-tanh, default
 * activations) from a finite h0 within [-1, 1] (clamped there; a NaN reads as 0); bf16
 * also runs RNN-ReLU. LSTMC_ERR_ARG for others. scratch: lstmc_seq_scratch_size_q(s, qtype)
 * floats.
 */
enum { LSTMC_QT_INT8 = 1, LSTMC_QT_BF16 = 2 };
size_t lstmc_seq_qsize(const lstmc_seq *s, int qtype);
size_t lstmc_seq_qoffset(const lstmc_seq *s, int qtype, int layer, int dir, int which);
size_t lstmc_seq_scratch_size_q(const lstmc_seq *s, int qtype);
int lstmc_seq_forward_q(float *y, float *hn, float *cn, const float *x, const float *h0,
                        const float *c0, const float *params, const uint8_t *qw, int qtype,
                        float *scratch, const lstmc_seq *s);
enum {
    LSTMC_Q8_AUTO = 0,
    LSTMC_Q8_C = 1,                 /* the portable kernel */
    LSTMC_Q8_AVX2 = 2,              /* 8 lanes, VPMADDUBSW / VPMADDWD on signed bytes */
    LSTMC_Q8_AVXVNNI = 3,           /* 8 lanes, VEX VPDPBUSD (AVX-VNNI without AVX-512) */
    LSTMC_Q8_AVX512VNNI = 4,        /* 16 lanes, VPDPBUSD */
    LSTMC_Q8_AMX = 5,               /* AMX tiles (TDPBUSD) for products of several rows, the
                                       AVX-512 VNNI kernel for the others */
    LSTMC_Q8_WIDE_AVX2 = 6          /* the AVX-512 VNNI tiles built for AVX2 (tests only) */
};
void lstmc_set_q8_kernel(int kernel);   /* out-of-range values mean AUTO */
int lstmc_get_q8_kernel(void);
int lstmc_q8_kernel_for(void);          /* the kernel that runs here: forced ones fall back */
/* The tile rows AMX is configured for on the calling thread, 0 when released (as after every
 * call of lstmc's; internal.h lstmc_amx_configure). For tests. */
int lstmc_amx_configured_rows(void);
int lstmc_q8_vnni_supported(void);
int lstmc_q8_avxvnni_supported(void);
int lstmc_q8_amx_supported(void);       /* and usable: the kernel granted the tile data */
int lstmc_q8_row_bytes(int K);
size_t lstmc_q8_strip_bytes(int K);
size_t lstmc_q8_pack_bytes(int H, int K, int G);
void lstmc_q8_pack_gates(uint8_t *set, const int8_t *Wq, const float *scale, int H, int K,
                         int g0, int g1, int u0, int u1);
void lstmc_q8_quantize_rows(uint8_t *q, int ldq, float *scale, const float *a, int lda, int n,
                            int K);
/* kernel: as lstmc_q8_kernel_for chose it (the CPU runs it; not checked again per call) */
void lstmc_q8_gemm(int kernel, int n, const uint8_t *A, int lda, const float *a_scale, int K,
                   const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0, int u1,
                   float *C, int ldc);

/*
 * bfloat16 products (quant_bf16.c; the arithmetic of lstmc/reference.py to_bf16 /
 * bf16_product): C[j, col] = sum_k a[j, k] w[n, k] in float32 over bfloat16 operands, n and
 * col as in lstmc_q8_gemm. Weights: bfloat16 bits (G H, K) packed by lstmc_bf16_pack_gates;
 * activations: rows of lstmc_bf16_row_elems(K) bfloat16 from lstmc_bf16_round_rows.
 */
enum {
    LSTMC_BF16_AUTO = 0,
    LSTMC_BF16_C = 1,               /* the portable kernel */
    LSTMC_BF16_AVX2 = 2,            /* 8 lanes, widened to float32, FMA */
    LSTMC_BF16_AVX512 = 3,          /* 16 lanes, VDPBF16PS (AVX-512 BF16) */
    LSTMC_BF16_AMX = 4,             /* AMX tiles (TDPBF16PS) for products of several rows, the
                                       AVX-512 BF16 kernel for the others */
    LSTMC_BF16_WIDE_AVX2 = 5        /* the AVX-512 BF16 tiles built for AVX2 (tests only) */
};
void lstmc_set_bf16_kernel(int kernel);   /* out-of-range values mean AUTO */
int lstmc_bf16_kernel_for(void);          /* the kernel that runs here: forced ones fall back */
int lstmc_bf16_avx512_supported(void);
int lstmc_bf16_amx_supported(void);       /* and usable: the kernel granted the tile data */
int lstmc_bf16_row_elems(int K);
size_t lstmc_bf16_strip_bytes(int K);
size_t lstmc_bf16_pack_bytes(int H, int K, int G);
void lstmc_bf16_pack_gates(uint8_t *set, const uint16_t *Wb, int H, int K, int g0, int g1,
                           int u0, int u1);
void lstmc_bf16_round(uint16_t *q, int ldq, const float *a, int lda, int n, int c0, int c1);
void lstmc_bf16_round_rows(uint16_t *q, int ldq, const float *a, int lda, int n, int K);
/* kernel: as lstmc_bf16_kernel_for chose it (the CPU runs it; not checked again per call) */
void lstmc_bf16_gemm(int kernel, int n, const uint16_t *A, int lda, int K, const uint8_t *set,
                     int g0, int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc);

/* ---- decoding (decode.c): between two steps of a search over a decoder's outputs ------- */
/* x (rows, cols) float32 -> log softmax of each row, in place */
int lstmc_log_softmax_f32(float *x, int rows, int cols);
/* One step of beam search over B sentences x K beams (N = B*K rows) and V classes; see
 * decode.c. tokens, parent (N) out; alive, fin_score (B, K) double, fin_ref (B, K),
 * fin_count (B) int64, done (B) in/out; cand_val, cand_idx (2K) scratch; logp (N, V). */
int lstmc_beam_step(int64_t *tokens, int64_t *parent, double *alive, double *fin_score,
                    int64_t *fin_ref, int64_t *fin_count, uint8_t *done,
                    double *cand_val, int64_t *cand_idx,
                    const float *logp, int B, int K, int V, int t, int64_t eos,
                    double length_penalty);

#ifdef __cplusplus
}
#endif
#endif /* LSTMC_H */
