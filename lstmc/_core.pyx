# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The one boundary between Python and lstmc's C kernels.

This is the only module that touches pointers. Each entry point checks that every array it
is handed has the dtype, size, contiguity and writability the C code will assume, then makes
one ``with nogil:`` call; C answers with a status code and Python raises. The layers above
(``lstmc.nn``) give the user-facing error messages; the checks here make sure that no bug
above can become a crash below.
"""
import signal as _signal
import threading as _threading

import numpy as np

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

cdef extern from "lstmc.h" nogil:
    ctypedef int lstmc_blas_int
    ctypedef void (*lstmc_sgemm_fn)(char *, char *, lstmc_blas_int *, lstmc_blas_int *,
                                    lstmc_blas_int *, float *, float *, lstmc_blas_int *,
                                    float *, lstmc_blas_int *, float *, float *,
                                    lstmc_blas_int *) noexcept
    ctypedef void (*lstmc_dgemm_fn)(char *, char *, lstmc_blas_int *, lstmc_blas_int *,
                                    lstmc_blas_int *, double *, double *, lstmc_blas_int *,
                                    double *, lstmc_blas_int *, double *, double *,
                                    lstmc_blas_int *) noexcept
    ctypedef void (*lstmc_sgemv_fn)(char *, lstmc_blas_int *, lstmc_blas_int *, float *,
                                    float *, lstmc_blas_int *, float *, lstmc_blas_int *,
                                    float *, float *, lstmc_blas_int *) noexcept
    ctypedef void (*lstmc_dgemv_fn)(char *, lstmc_blas_int *, lstmc_blas_int *, double *,
                                    double *, lstmc_blas_int *, double *, lstmc_blas_int *,
                                    double *, double *, lstmc_blas_int *) noexcept
    void lstmc_set_blas(lstmc_sgemm_fn sgemm, lstmc_dgemm_fn dgemm, lstmc_sgemv_fn sgemv,
                        lstmc_dgemv_fn dgemv)
    ctypedef int (*lstmc_get_threads_fn)() noexcept
    ctypedef void (*lstmc_set_threads_fn)(int) noexcept
    void lstmc_set_blas_threads_api(lstmc_get_threads_fn get, lstmc_set_threads_fn set)

    enum:
        LSTMC_OK, LSTMC_ERR_ARG, LSTMC_ERR_NOBLAS, LSTMC_ERR_CANCELLED
        LSTMC_CELL_LSTM, LSTMC_CELL_GRU, LSTMC_CELL_GRU_RESET_BEFORE
        LSTMC_CELL_RNN_TANH, LSTMC_CELL_RNN_RELU
        LSTMC_W_IH, LSTMC_W_HH, LSTMC_B_IH, LSTMC_B_HH, LSTMC_W_HR, LSTMC_W_PH
        LSTMC_ACT_SIGMOID, LSTMC_ACT_TANH, LSTMC_ACT_RELU, LSTMC_ACT_AFFINE
        LSTMC_ACT_LEAKY_RELU, LSTMC_ACT_THRESHOLDED_RELU, LSTMC_ACT_SCALED_TANH
        LSTMC_ACT_HARD_SIGMOID, LSTMC_ACT_ELU, LSTMC_ACT_SOFTSIGN, LSTMC_ACT_SOFTPLUS

    int lstmc_openmp_enabled()
    void lstmc_set_num_threads(int n)
    int lstmc_get_num_threads()
    int lstmc_thread_cap()
    void lstmc_set_thread_cap(int cap)
    void lstmc_set_recurrent_kernel(int kernel)
    int lstmc_get_recurrent_kernel()
    int lstmc_recur_kernel_for(int f64, int batch, int steps, int prepacked)

    ctypedef struct lstmc_cell_options:
        int act[2][3]
        double alpha[2][3]
        double beta[2][3]
        double clip
        int coupled, peepholes

    ctypedef struct lstmc_seq:
        int cell, steps, batch, input, hidden, proj, layers, dirs, bias
        const int *batch_sizes
        const int *lengths
        const lstmc_cell_options *options
        const volatile int *cancel
        int recurrent_dropout

    int lstmc_seq_check(const lstmc_seq *s)
    size_t lstmc_seq_rows(const lstmc_seq *s)
    size_t lstmc_seq_param_count(const lstmc_seq *s)
    size_t lstmc_seq_param_offset(const lstmc_seq *s, int layer, int dir, int which)
    size_t lstmc_seq_reserve_size(const lstmc_seq *s)
    size_t lstmc_seq_scratch_size(const lstmc_seq *s, int train)
    int lstmc_seq_forward_f32(float *y, float *hn, float *cn, float *reserve, const float *x,
                              const float *h0, const float *c0, const float *masks,
                              const float *rmasks, const float *params, const float *packed,
                              float *scratch, const lstmc_seq *s)
    int lstmc_seq_forward_f64(double *y, double *hn, double *cn, double *reserve,
                              const double *x, const double *h0, const double *c0,
                              const double *masks, const double *rmasks, const double *params,
                              const double *packed, double *scratch, const lstmc_seq *s)
    size_t lstmc_seq_packed_size(const lstmc_seq *s)
    int lstmc_seq_pack_f32(float *packed, const float *params, const lstmc_seq *s)
    int lstmc_seq_pack_f64(double *packed, const double *params, const lstmc_seq *s)
    int lstmc_seq_packs(int f64)
    int lstmc_seq_backward_f32(float *dx, float *dh0, float *dc0, float *dparams,
                               const float *reserve, const float *dy, const float *dhn,
                               const float *dcn, const float *x, const float *masks,
                               const float *rmasks, const float *params, float *scratch,
                               const lstmc_seq *s)
    int lstmc_seq_backward_f64(double *dx, double *dh0, double *dc0, double *dparams,
                               const double *reserve, const double *dy, const double *dhn,
                               const double *dcn, const double *x, const double *masks,
                               const double *rmasks, const double *params, double *scratch,
                               const lstmc_seq *s)


cdef extern from "lstmc.h" nogil:
    enum:
        LSTMC_Q8_MAX_K
    void lstmc_set_q8_kernel(int kernel)
    int lstmc_get_q8_kernel()
    int lstmc_q8_kernel_for()
    int lstmc_amx_configured_rows()
    int lstmc_q8_row_bytes(int K)
    size_t lstmc_q8_pack_bytes(int H, int K, int G)
    void lstmc_q8_pack_gates(uint8_t *set, const int8_t *Wq, const float *scale, int H, int K,
                             int g0, int g1, int u0, int u1)
    void lstmc_q8_quantize_rows(uint8_t *q, int ldq, float *scale, const float *a, int lda,
                                int n, int K)
    void lstmc_q8_gemm(int kernel, int n, const uint8_t *A, int lda, const float *a_scale,
                       int K, const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                       int u1, float *C, int ldc)
    enum:
        LSTMC_QT_INT8
        LSTMC_QT_BF16
    size_t lstmc_seq_qsize(const lstmc_seq *s, int qtype)
    size_t lstmc_seq_qoffset(const lstmc_seq *s, int qtype, int layer, int dir, int which)
    size_t lstmc_seq_scratch_size_q(const lstmc_seq *s, int qtype)
    int lstmc_seq_forward_q(float *y, float *hn, float *cn, const float *x, const float *h0,
                            const float *c0, const float *params, const uint8_t *qw, int qtype,
                            float *scratch, const lstmc_seq *s)
    void lstmc_set_bf16_kernel(int kernel)
    int lstmc_bf16_kernel_for()
    int lstmc_bf16_row_elems(int K)
    size_t lstmc_bf16_pack_bytes(int H, int K, int G)
    void lstmc_bf16_pack_gates(uint8_t *set, const uint16_t *Wb, int H, int K, int g0, int g1,
                               int u0, int u1)
    void lstmc_bf16_round_rows(uint16_t *q, int ldq, const float *a, int lda, int n, int K)
    void lstmc_bf16_gemm(int kernel, int n, const uint16_t *A, int lda, int K,
                         const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                         int u1, float *C, int ldc)


cdef void *_blas_function(dict capi, str name, int int_arg) except NULL:
    """The address of scipy's BLAS function `name`, once its capsule's C signature shows the
    integer width this build was made for (setup.py reads it from scipy's cython_blas.pxd):
    argument `int_arg` is an integer pointer. A cimport would check the whole signature;
    a scipy of the other width would otherwise be called with the wrong integers."""
    capsule = capi[name]
    signature = (<bytes>PyCapsule_GetName(capsule)).decode()
    integer = signature[signature.index("(") + 1:].split(", ")[int_arg]
    if (integer == "int *") != (sizeof(lstmc_blas_int) == sizeof(int)):
        raise ImportError(f"lstmc was built for a BLAS with {8 * sizeof(lstmc_blas_int)}-bit "
                          f"integers, but this scipy's {name} is {signature!r}: reinstall lstmc "
                          "against the installed scipy")
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


def set_blas(dict capi):
    """Hands C scipy's BLAS: `capi` is scipy.linalg.cython_blas's __pyx_capi__ (lstmc's
    _scipy_blas does this when lstmc is imported; until then a kernel call fails with
    LSTMC_ERR_NOBLAS)."""
    lstmc_set_blas(<lstmc_sgemm_fn>_blas_function(capi, "sgemm", 2),
                   <lstmc_dgemm_fn>_blas_function(capi, "dgemm", 2),
                   <lstmc_sgemv_fn>_blas_function(capi, "sgemv", 1),
                   <lstmc_dgemv_fn>_blas_function(capi, "dgemv", 1))

CELL_LSTM, CELL_GRU, CELL_GRU_RESET_BEFORE = (LSTMC_CELL_LSTM, LSTMC_CELL_GRU,
                                               LSTMC_CELL_GRU_RESET_BEFORE)
CELL_RNN_TANH, CELL_RNN_RELU = LSTMC_CELL_RNN_TANH, LSTMC_CELL_RNN_RELU
W_IH, W_HH, B_IH, B_HH, W_HR = LSTMC_W_IH, LSTMC_W_HH, LSTMC_B_IH, LSTMC_B_HH, LSTMC_W_HR
W_PH = LSTMC_W_PH
# ONNX's activation names (lower case) -> csrc/lstmc.h LSTMC_ACT_*
ACTIVATIONS = {"sigmoid": LSTMC_ACT_SIGMOID, "tanh": LSTMC_ACT_TANH, "relu": LSTMC_ACT_RELU,
               "affine": LSTMC_ACT_AFFINE, "leakyrelu": LSTMC_ACT_LEAKY_RELU,
               "thresholdedrelu": LSTMC_ACT_THRESHOLDED_RELU,
               "scaledtanh": LSTMC_ACT_SCALED_TANH, "hardsigmoid": LSTMC_ACT_HARD_SIGMOID,
               "elu": LSTMC_ACT_ELU, "softsign": LSTMC_ACT_SOFTSIGN,
               "softplus": LSTMC_ACT_SOFTPLUS}
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = SUPPORTED_DTYPES[0]
cdef type _ndarray = np.ndarray   # looked up once: the checks run on every call

cdef double _empty[1]   # the address handed to C for a zero-length array (never read)


def set_blas_threads_api(size_t get_address, size_t set_address):
    """Hands C the addresses of the BLAS's int get_num_threads(void) and
    void set_num_threads(int) (0, 0 to forget them)."""
    lstmc_set_blas_threads_api(<lstmc_get_threads_fn>get_address,
                               <lstmc_set_threads_fn>set_address)


def openmp_enabled():
    """True when the kernels were built with OpenMP."""
    return bool(lstmc_openmp_enabled())


cdef extern from *:
    const char *LSTMC_BUILD_FLAGS


def build_flags():
    """The compiler flags and macros the extension was built with."""
    return LSTMC_BUILD_FLAGS.decode()


def set_num_threads(int n):
    """Threads of the kernels (n >= 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lstmc_set_num_threads(n)


def get_num_threads():
    """Threads the kernels use: set_num_threads' value, else OpenMP's default."""
    return lstmc_get_num_threads()


def thread_cap():
    """Threads a call may use while the process is found contended (cores taken by other
    processes or pools: csrc/seq.c, the contention governor); 0 when not capped."""
    return lstmc_thread_cap()


def _set_thread_cap(int cap):
    """Caps inference calls at `cap` threads (0 lifts it) as the contention governor would,
    for the next quarter second: for tests."""
    lstmc_set_thread_cap(cap)


RECURRENT_KERNELS = ("auto", "blas", "packed_c", "packed_avx2", "packed_avx512",
                     "packed_wide_avx2")


def _set_recurrent_kernel(str kernel):
    """Forces the kernel of the recurrent product at small batch (lstmc.h, LSTMC_RECUR_*),
    process-wide: one of RECURRENT_KERNELS. For tests and benchmarks."""
    if kernel not in RECURRENT_KERNELS:
        raise ValueError(f"kernel must be one of {RECURRENT_KERNELS}, got {kernel!r}")
    lstmc_set_recurrent_kernel(RECURRENT_KERNELS.index(kernel))


def _get_recurrent_kernel():
    """The setting of _set_recurrent_kernel."""
    return RECURRENT_KERNELS[lstmc_get_recurrent_kernel()]


def recurrent_kernel_for(dtype, int batch, int steps, bint prepacked):
    """The recurrent kernel (a name of RECURRENT_KERNELS) a call of `dtype`, `batch` rows and
    `steps` steps runs on this CPU under the current setting; `prepacked`: on a packed copy."""
    return RECURRENT_KERNELS[lstmc_recur_kernel_for(np.dtype(dtype) == np.float64, batch,
                                                    steps, prepacked)]


def packs(dtype):
    """True if a forward of `dtype` runs on a packed copy of the weights (Seq.pack) when
    given one, under the current recurrent-kernel setting; else packing is wasted work."""
    return bool(lstmc_seq_packs(np.dtype(dtype) == np.float64))


HUGE_PAGE = 2 << 20
HUGE_MIN_BYTES = 1 << 20


def empty_aligned(size_t count, dtype, bint huge=False):
    """A 1-D array of `count` elements that starts on a 64-byte boundary (what Seq.pack and
    Seq.forward require of a packed copy). `huge` and at least HUGE_MIN_BYTES: zeroed, on
    its own anonymous memory, 2 MB aligned and advised as huge pages where the OS has them.

    The quantized weights ask for that: read from L2 at every step, they want contiguous
    physical memory. On 4 KB pages they land on the L2's sets as the pages fall, and a working
    set near the L2's size then misses in some processes and not in others (int8 LSTM I512
    H512 B4 T25, one thread, fresh processes: 0.77-1.32 ms; on huge pages 0.83-0.89). The
    float32 copies gained nothing (benchmarks/ab_builds.py, huge / small pages: H256 B1 T150
    1.01, H512 B1 T25 1.03, I128 H256 B32 T100 1.00). Costs at most one huge page of RSS."""
    dt = np.dtype(dtype)
    cdef size_t nbytes = count * dt.itemsize
    huge = huge and nbytes >= HUGE_MIN_BYTES
    cdef size_t align = HUGE_PAGE if huge else 64
    raw = np.frombuffer(_huge_mapping(nbytes + align), dtype=np.uint8) if huge \
        else np.empty(nbytes + align, dtype=np.uint8)
    skip = (-raw.__array_interface__["data"][0]) % align
    return raw[skip:skip + nbytes].view(dt)


def _huge_mapping(size_t nbytes):
    """Anonymous zeroed memory of nbytes (an mmap object), advised as huge pages if the OS
    takes the advice (an OS without it keeps small pages)."""
    import mmap
    mm = mmap.mmap(-1, nbytes)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            mm.madvise(advice)
        except OSError:
            pass
    return mm


cdef char _format(object dtype):
    """The buffer-protocol format character of a supported dtype (`is` first: most arrays
    carry numpy's own descriptor object, and comparing descriptors costs a call)."""
    return b"f" if dtype is _F32 or dtype == _F32 else b"d"


cdef void *_addr(object a, str name, object dtype, size_t size, bint writable,
                 bint optional, bint at_least=False) except? NULL:
    """Checks `a` and returns its data address (NULL for an allowed None).

    One buffer-protocol request checks contiguity, writability, item type and size in C;
    only an array it refuses goes through the attribute checks below, which say what is
    wrong. (Reading dtype, flags, size and __array_interface__ as attributes cost 5-6 us
    per array, most of a one-step call: T=1 LSTM I=H=8 at one thread, 42 -> 6 us.)
    """
    if a is None:
        if optional:
            return NULL
        raise ValueError(f"{name} is required")
    cdef Py_buffer view
    cdef void *address = NULL
    cdef bint ok = False
    cdef Py_ssize_t count
    cdef char fmt = _format(dtype)
    if isinstance(a, _ndarray):
        try:
            PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                               (PyBUF_WRITABLE if writable else 0))
        except (BufferError, ValueError):   # numpy raises either; the checks below explain
            pass
        else:
            count = view.len // view.itemsize if view.itemsize else 0
            ok = (view.format != NULL and view.format[0] == fmt and view.format[1] == 0
                  and ((<size_t>count >= size) if at_least else (<size_t>count == size)))
            address = view.buf if count else <void *>_empty
            PyBuffer_Release(&view)   # the caller holds `a`, so its memory stays put
    if ok:
        return address
    if not isinstance(a, _ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if (a.size < size) if at_least else (<size_t>a.size != size):
        raise ValueError(f"{name} must have {'at least ' if at_least else ''}{size} elements, "
                         f"got {a.size}")
    if a.size == 0:
        return <void *>_empty
    cdef Py_ssize_t data = a.__array_interface__["data"][0]   # e.g. a byte-order-marked format
    return <void *>data


def plain_rows(a, dtype, Py_ssize_t width):
    """The row count of `a` if it is a matrix the kernels can read as it is: a 2-D numpy
    array of `dtype` (one of SUPPORTED_DTYPES), C-contiguous, `width` columns; else -1. The
    layers' fast-path test, in one buffer-protocol request (0.2 us; reading dtype, flags and
    shape as attributes took 0.5 us)."""
    if not isinstance(a, _ndarray):
        return -1
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError):
        return -1
    cdef Py_ssize_t rows = -1
    if (view.ndim == 2 and view.shape[1] == width and view.format != NULL
            and view.format[0] == _format(dtype) and view.format[1] == 0):
        rows = view.shape[0]
    PyBuffer_Release(&view)
    return rows


cdef void *_packed_addr(object packed, object dtype, size_t size, bint writable) except? NULL:
    """_addr of a packed copy (optional when read): it must also start on a 64-byte boundary."""
    cdef void *address = _addr(packed, "packed", dtype, size, writable, not writable)
    if (<size_t>address) % 64:
        raise ValueError("packed must start on a 64-byte boundary (use empty_aligned)")
    return address


# ---- Ctrl-C during a long call -------------------------------------------------------------
# A call from the main thread with work enough (CANCEL_MIN_WORK multiply-adds) and Python's
# own SIGINT handling in place gets a C handler for SIGINT while it runs: the handler sets the
# call's cancel flag (the kernels stop between two steps, lstmc_seq.cancel) and hands the
# signal on to Python's handler, which then raises KeyboardInterrupt when the call returns.
# Two sigaction calls a call (about a microsecond) are why short calls go without.
cdef extern from *:
    """
    #include <signal.h>
    #include <string.h>
    static volatile int lstmc_sigint_flag;
    static struct sigaction lstmc_sigint_previous;
    static void lstmc_on_sigint(int sig)
    {
        lstmc_sigint_flag = 1;
        if (lstmc_sigint_previous.sa_handler != SIG_DFL &&
            lstmc_sigint_previous.sa_handler != SIG_IGN)
            lstmc_sigint_previous.sa_handler(sig);       /* Python's: it notes the signal */
    }
    /* 1 if installed (the previous action kept for restore) */
    static int lstmc_sigint_install(void)
    {
        struct sigaction mine;
        memset(&mine, 0, sizeof mine);
        mine.sa_handler = lstmc_on_sigint;
        sigemptyset(&mine.sa_mask);
        lstmc_sigint_flag = 0;
        return sigaction(SIGINT, &mine, &lstmc_sigint_previous) == 0;
    }
    static void lstmc_sigint_restore(void) { sigaction(SIGINT, &lstmc_sigint_previous, NULL); }
    static const volatile int *lstmc_sigint_address(void) { return &lstmc_sigint_flag; }
    """
    bint lstmc_sigint_install() nogil
    void lstmc_sigint_restore() nogil
    const volatile int *lstmc_sigint_address() nogil

CANCEL_MIN_WORK = 1 << 20
_MAIN_THREAD = _threading.main_thread()


cdef bint _catch_sigint(lstmc_seq *s):
    """Hooks SIGINT for this call and points s.cancel at the hook's flag, if worth it: the
    main thread, Python's default handler, a call long enough to be worth a second's wait.
    True when hooked (then _release_sigint after the call)."""
    cdef double work = (<double>s.steps * s.batch * s.hidden * (s.input + s.hidden) *
                        s.layers * s.dirs)
    if work < CANCEL_MIN_WORK or _threading.current_thread() is not _MAIN_THREAD:
        return False
    if _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler:
        return False
    if not lstmc_sigint_install():
        return False
    s.cancel = lstmc_sigint_address()
    return True


cdef inline void _release_sigint(bint hooked) noexcept:
    if hooked:
        lstmc_sigint_restore()


cdef _raise_status(int status):
    if status == LSTMC_ERR_CANCELLED:
        PyErr_CheckSignals()       # Python's handler noted the signal: KeyboardInterrupt
        raise KeyboardInterrupt
    if status == LSTMC_ERR_ARG:
        raise ValueError("lstmc: the C kernels rejected the sequence descriptor")
    if status == LSTMC_ERR_NOBLAS:
        raise RuntimeError("lstmc: no BLAS was handed to the C kernels")
    if status != LSTMC_OK:
        raise RuntimeError(f"lstmc: C kernels returned status {status}")


cdef struct _Counts:   # elements of each array of a forward / backward call
    bint has_c
    size_t y, h, c, x, masks, rmasks, params, reserve, scratch, packed


cdef class Seq:
    """A sequence problem: cell, sizes and the sorted row lengths (see csrc/lstmc.h).

    Parameters
    ----------
    cell : int
        CELL_LSTM, CELL_GRU, CELL_GRU_RESET_BEFORE, CELL_RNN_TANH or CELL_RNN_RELU. Only the
        LSTM has a cell state c: the c arrays must be None for the others.
    T, B, I, H, P, L, D : int
        Steps, batch rows, input width, hidden units, projection (0 = none), layers,
        directions.
    bias : bool
    lengths : array of int, shape (B,)
        Steps of each row, sorted in non-increasing order (the caller permutes rows).
    options : None or tuple (acts, alphas, betas, clip, coupled, peepholes)
        The cell's options (csrc/lstmc.h lstmc_cell_options): acts, alphas, betas D
        sequences of 3 (activation codes, ACTIVATIONS' values, and their alpha / beta), clip
        a float >= 0 (0: none), coupled and peepholes bools. None: the default cell.
    recurrent_dropout : bool
        Training calls with recurrent dropout: forward (with a reserve) and backward then take
        `rmasks` (csrc/lstmc.h), and the scratch holds their buffers.
    """
    cdef lstmc_seq s
    cdef lstmc_cell_options opts
    cdef int[::1] _batch_sizes
    cdef int[::1] _lengths
    cdef readonly object batch_sizes, lengths

    def __cinit__(self, int cell, int T, int B, int I, int H, int P, int L, int D, bint bias,
                  lengths, options=None, bint recurrent_dropout=False):
        lengths = np.ascontiguousarray(lengths, dtype=np.intc)
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
        if B and (lengths.min() < 0 or lengths.max() > T or np.any(np.diff(lengths) > 0)):
            raise ValueError("lengths must be sorted non-increasing within [0, T]")
        # batch_sizes[t] = rows still running at step t
        batch_sizes = np.ascontiguousarray(
            np.count_nonzero(lengths[None, :] > np.arange(T)[:, None], axis=1), dtype=np.intc)
        self.lengths, self.batch_sizes = lengths, batch_sizes
        self._lengths, self._batch_sizes = lengths, batch_sizes
        self.s.cell, self.s.steps, self.s.batch, self.s.input = cell, T, B, I
        self.s.hidden, self.s.proj, self.s.layers, self.s.dirs, self.s.bias = H, P, L, D, bias
        self.s.batch_sizes = &self._batch_sizes[0] if T > 0 else NULL
        self.s.lengths = &self._lengths[0] if B > 0 else NULL
        self.s.options = NULL
        self.s.cancel = NULL
        self.s.recurrent_dropout = recurrent_dropout
        if options is not None:
            acts, alphas, betas, clip, coupled, peepholes = options
            for d in range(min(D, 2)):
                for k in range(3):
                    self.opts.act[d][k] = acts[d][k]
                    self.opts.alpha[d][k] = alphas[d][k]
                    self.opts.beta[d][k] = betas[d][k]
            self.opts.clip, self.opts.coupled, self.opts.peepholes = clip, coupled, peepholes
            self.s.options = &self.opts
        if lstmc_seq_check(&self.s) != LSTMC_OK:
            raise ValueError(f"invalid recurrent problem: cell={cell} T={T} B={B} I={I} H={H} "
                             f"P={P} L={L} D={D}")

    @property
    def recurrent_dropout(self):
        return bool(self.s.recurrent_dropout)

    @property
    def rows(self):
        """N, the number of valid (t, b) positions."""
        return lstmc_seq_rows(&self.s)

    @property
    def param_count(self):
        return lstmc_seq_param_count(&self.s)

    @property
    def reserve_size(self):
        return lstmc_seq_reserve_size(&self.s)

    def scratch_size(self, bint train):
        return lstmc_seq_scratch_size(&self.s, train)

    @property
    def packed_size(self):
        """Elements of a packed copy of the weights (see pack)."""
        return lstmc_seq_packed_size(&self.s)

    def pack(self, packed, params):
        """Fills `packed` (packed_size elements, 64-byte aligned: empty_aligned) with the
        kernels' packed copy of `params`, for forward(..., packed=). The copy depends on the
        cell and sizes, not on T, B or lengths; it is stale once params change."""
        if not isinstance(params, _ndarray) or params.dtype not in SUPPORTED_DTYPES:
            raise TypeError("params must be a float32 or float64 numpy.ndarray")
        dt = params.dtype
        cdef void *pp = _addr(params, "params", dt, self.param_count, False, False)
        cdef void *pk = _packed_addr(packed, dt, self.packed_size, True)
        cdef int status
        if dt == np.float32:
            with nogil:
                status = lstmc_seq_pack_f32(<float *>pk, <const float *>pp, &self.s)
        else:
            with nogil:
                status = lstmc_seq_pack_f64(<double *>pk, <const double *>pp, &self.s)
        _raise_status(status)

    def param_offset(self, int layer, int direction, int which):
        """Offset of one tensor in the flat parameter buffer, or None if it does not exist."""
        cdef size_t off = lstmc_seq_param_offset(&self.s, layer, direction, which)
        return None if off == <size_t>-1 else off

    @property
    def has_c(self):
        return self.s.cell == LSTMC_CELL_LSTM

    cdef _Counts _counts(self, bint train) noexcept:
        """The element counts forward and backward check, straight from C (no Python
        attribute on the way: a streaming step makes these checks on every call)."""
        cdef _Counts n
        cdef bint has_c = self.s.cell == LSTMC_CELL_LSTM
        cdef size_t N = lstmc_seq_rows(&self.s), B = self.s.batch
        cdef size_t H = self.s.hidden if has_c else 0
        cdef size_t Hout = self.s.proj if self.s.proj > 0 else self.s.hidden
        cdef size_t LD = self.s.layers * self.s.dirs, Y = self.s.dirs * Hout
        n.has_c = has_c
        n.y, n.h, n.c, n.x = N * Y, LD * B * Hout, LD * B * H, N * self.s.input
        n.masks = (self.s.layers - 1) * N * Y
        n.rmasks = LD * (4 if has_c else 3 if self.s.cell <= LSTMC_CELL_GRU_RESET_BEFORE
                         else 1) * B * Hout
        n.params, n.reserve = lstmc_seq_param_count(&self.s), lstmc_seq_reserve_size(&self.s)
        n.scratch, n.packed = lstmc_seq_scratch_size(&self.s, train), lstmc_seq_packed_size(&self.s)
        return n

    def forward(self, y, hn, cn, reserve, x, h0, c0, masks, params, scratch, packed=None,
                rmasks=None):
        """Whole-sequence forward (all arrays 1-D views, dtype of `params`).

        y (N*D*Hout,), hn (L*D*B*Hout,), cn (L*D*B*H,), reserve (reserve_size,) or None for
        inference, x (N*I,), h0/c0 like hn/cn or None, masks ((L-1)*N*D*Hout,) or None,
        params (param_count,), scratch (>= scratch_size(reserve is not None),), packed: a
        current pack of params (packed_size,) from a Seq of the same cell and sizes, or None;
        rmasks (L*D*G*B*Hout,): a recurrent_dropout Seq's training call's masks, else None.
        """
        if not isinstance(params, _ndarray) or params.dtype not in SUPPORTED_DTYPES:
            raise TypeError("params must be a float32 or float64 numpy.ndarray")
        dt = params.dtype
        cdef bint train = reserve is not None
        cdef _Counts n = self._counts(train)
        cdef void *py = _addr(y, "y", dt, n.y, True, False)
        cdef void *phn = _addr(hn, "hn", dt, n.h, True, False)
        cdef void *pcn = _addr(cn, "cn", dt, n.c, True, not n.has_c)
        cdef void *pres = _addr(reserve, "reserve", dt, n.reserve, True, True)
        cdef void *px = _addr(x, "x", dt, n.x, False, False)
        cdef void *ph0 = _addr(h0, "h0", dt, n.h, False, True)
        cdef void *pc0 = _addr(c0, "c0", dt, n.c, False, True)
        cdef void *pm = _addr(masks, "masks", dt, n.masks, False, True)
        cdef void *prm = self._rmasks_addr(rmasks, dt, n.rmasks, train)
        cdef void *pp = _addr(params, "params", dt, n.params, False, False)
        cdef void *pw = _addr(scratch, "scratch", dt, n.scratch, True, False, True)
        cdef void *pk = _packed_addr(packed, dt, n.packed, False)
        if train and pres == NULL:   # a zero-length reserve still means "training"
            pres = <void *>_empty
        cdef int status
        cdef lstmc_seq s = self.s          # this call's own, with its cancel flag
        cdef bint hooked = _catch_sigint(&s)
        try:
            if _format(dt) == b"f":
                with nogil:
                    status = lstmc_seq_forward_f32(<float *>py, <float *>phn, <float *>pcn,
                                                   <float *>pres, <const float *>px,
                                                   <const float *>ph0, <const float *>pc0,
                                                   <const float *>pm, <const float *>prm,
                                                   <const float *>pp, <const float *>pk,
                                                   <float *>pw, &s)
            else:
                with nogil:
                    status = lstmc_seq_forward_f64(<double *>py, <double *>phn, <double *>pcn,
                                                   <double *>pres, <const double *>px,
                                                   <const double *>ph0, <const double *>pc0,
                                                   <const double *>pm, <const double *>prm,
                                                   <const double *>pp, <const double *>pk,
                                                   <double *>pw, &s)
        finally:
            _release_sigint(hooked)
        _raise_status(status)

    def qsize(self, str dtype):
        """Bytes of the quantized weights of forward_q (each W_ih / W_hh at qoffset); dtype
        one of QTYPES."""
        return lstmc_seq_qsize(&self.s, _qtype(dtype))

    def qoffset(self, str dtype, int layer, int direction, int which):
        """Byte offset of W_ih (which = 0) or W_hh (1) of a layer and direction in the
        quantized weights, each a q8_pack / bf16_pack of all G gate blocks (K = the layer's
        input, or Hout)."""
        cdef int qtype = _qtype(dtype)
        if not (0 <= layer < self.s.layers and 0 <= direction < self.s.dirs and which in (0, 1)):
            raise ValueError(f"no {dtype} weights at layer {layer}, direction {direction}, "
                             f"which {which}")
        return lstmc_seq_qoffset(&self.s, qtype, layer, direction,
                                 LSTMC_W_IH if which == 0 else LSTMC_W_HH)

    def scratch_size_q(self, str dtype):
        return lstmc_seq_scratch_size_q(&self.s, _qtype(dtype))

    def forward_q(self, y, hn, cn, x, h0, c0, params, qw, str dtype, scratch):
        """A quantized inference forward (lstmc.h lstmc_seq_forward_q): forward's float32
        arrays (params: only the biases are read) and the packed weights qw (qsize(dtype)
        bytes, uint8) of dtype, one of QTYPES."""
        cdef int qtype = _qtype(dtype)
        cdef _Counts n = self._counts(False)
        dt = _F32
        cdef void *py = _addr(y, "y", dt, n.y, True, False)
        cdef void *phn = _addr(hn, "hn", dt, n.h, True, False)
        cdef void *pcn = _addr(cn, "cn", dt, n.c, True, not n.has_c)
        cdef void *px = _addr(x, "x", dt, n.x, False, False)
        cdef void *ph0 = _addr(h0, "h0", dt, n.h, False, True)
        cdef void *pc0 = _addr(c0, "c0", dt, n.c, False, True)
        cdef void *pp = _addr(params, "params", dt, n.params, False, False)
        cdef void *pw = _addr(scratch, "scratch", dt, lstmc_seq_scratch_size_q(&self.s, qtype),
                              True, False, True)
        cdef size_t size = lstmc_seq_qsize(&self.s, qtype)
        if not isinstance(qw, _ndarray) or qw.dtype != np.uint8 or not qw.flags.c_contiguous \
                or <size_t>qw.size != size:
            raise ValueError(f"qw must be a contiguous uint8 array of {size} bytes "
                             f"(qsize({dtype!r}))")
        cdef const uint8_t[::1] qv = qw
        cdef const uint8_t *pq = &qv[0]
        cdef int status
        cdef lstmc_seq s = self.s
        cdef bint hooked = _catch_sigint(&s)
        try:
            with nogil:
                status = lstmc_seq_forward_q(<float *>py, <float *>phn, <float *>pcn,
                                             <const float *>px, <const float *>ph0,
                                             <const float *>pc0, <const float *>pp, pq, qtype,
                                             <float *>pw, &s)
        finally:
            _release_sigint(hooked)
        if status == LSTMC_ERR_ARG:
            raise ValueError(f"this sequence has no {dtype} forward: only LSTM without "
                             "projection, GRU reset-after and RNN-tanh (bf16: RNN-ReLU too) "
                             "with their default activations run on quantized weights")
        _raise_status(status)

    cdef void *_rmasks_addr(self, rmasks, dt, size_t count, bint train) except? NULL:
        """rmasks' address: required by a recurrent_dropout Seq's training calls, refused
        by every other call."""
        if not self.s.recurrent_dropout or not train:
            if rmasks is not None:
                raise ValueError("rmasks: only a training call of a Seq made with "
                                 "recurrent_dropout=True takes recurrent dropout masks")
            return NULL
        if rmasks is None:
            raise ValueError("rmasks: a Seq made with recurrent_dropout=True needs its "
                             "recurrent dropout masks in training calls")
        return _addr(rmasks, "rmasks", dt, count, False, False)

    def backward(self, dx, dh0, dc0, dparams, reserve, dy, dhn, dcn, x, masks, params, scratch,
                 rmasks=None):
        """Backward through time after a training forward; dparams accumulates.

        dx (N*I,), dh0/dc0 like h0/c0, dparams (param_count,), reserve (reserve_size,),
        dy (N*D*Hout,), dhn/dcn or None, x, masks, params, rmasks as in forward,
        scratch (>= scratch_size(True),).
        """
        if not isinstance(params, _ndarray) or params.dtype not in SUPPORTED_DTYPES:
            raise TypeError("params must be a float32 or float64 numpy.ndarray")
        dt = params.dtype
        cdef _Counts n = self._counts(True)
        cdef void *pdx = _addr(dx, "dx", dt, n.x, True, False)
        cdef void *pdh0 = _addr(dh0, "dh0", dt, n.h, True, False)
        cdef void *pdc0 = _addr(dc0, "dc0", dt, n.c, True, not n.has_c)
        cdef void *pdp = _addr(dparams, "dparams", dt, n.params, True, False)
        cdef void *pres = _addr(reserve, "reserve", dt, n.reserve, False, False)
        cdef void *pdy = _addr(dy, "dy", dt, n.y, False, False)
        cdef void *pdhn = _addr(dhn, "dhn", dt, n.h, False, True)
        cdef void *pdcn = _addr(dcn, "dcn", dt, n.c, False, True)
        cdef void *px = _addr(x, "x", dt, n.x, False, False)
        cdef void *pm = _addr(masks, "masks", dt, n.masks, False, True)
        cdef void *prm = self._rmasks_addr(rmasks, dt, n.rmasks, True)
        cdef void *pp = _addr(params, "params", dt, n.params, False, False)
        cdef void *pw = _addr(scratch, "scratch", dt, n.scratch, True, False, True)
        cdef int status
        cdef lstmc_seq s = self.s          # this call's own, with its cancel flag
        cdef bint hooked = _catch_sigint(&s)
        try:
            if _format(dt) == b"f":
                with nogil:
                    status = lstmc_seq_backward_f32(<float *>pdx, <float *>pdh0, <float *>pdc0,
                                                    <float *>pdp, <const float *>pres,
                                                    <const float *>pdy, <const float *>pdhn,
                                                    <const float *>pdcn, <const float *>px,
                                                    <const float *>pm, <const float *>prm,
                                                    <const float *>pp, <float *>pw, &s)
            else:
                with nogil:
                    status = lstmc_seq_backward_f64(<double *>pdx, <double *>pdh0, <double *>pdc0,
                                                    <double *>pdp, <const double *>pres,
                                                    <const double *>pdy, <const double *>pdhn,
                                                    <const double *>pdcn, <const double *>px,
                                                    <const double *>pm, <const double *>prm,
                                                    <const double *>pp, <double *>pw, &s)
        finally:
            _release_sigint(hooked)
        _raise_status(status)


# ---- int8 products (csrc/quant.c): the kernels of quantized inference, and their tests ----

# lstmc.h LSTMC_Q8_*; wide_avx2: the AVX-512 VNNI tiles built for AVX2 (tests)
Q8_KERNELS = ("auto", "c", "avx2", "avx_vnni", "avx512_vnni", "amx", "wide_avx2")
Q8_MAX_K = LSTMC_Q8_MAX_K


QTYPES = {"int8": LSTMC_QT_INT8, "bf16": LSTMC_QT_BF16}   # lstmc.h LSTMC_QT_*


cdef int _qtype(str dtype) except -1:
    if dtype not in QTYPES:
        raise ValueError(f"dtype must be one of {tuple(QTYPES)}, got {dtype!r}")
    return QTYPES[dtype]


def _set_q8_kernel(str kernel):
    """Forces the int8 product's kernel process-wide, one of Q8_KERNELS (a kernel this CPU
    lacks falls back: amx to the widest it has, avx512_vnni to its tiles built for AVX2
    (wide_avx2), avx_vnni to avx2, avx2 to c). Forced, amx runs every product; "auto" takes
    it only for the products where it pays (csrc/quant.c). For tests and benchmarks."""
    if kernel not in Q8_KERNELS:
        raise ValueError(f"kernel must be one of {Q8_KERNELS}, got {kernel!r}")
    lstmc_set_q8_kernel(Q8_KERNELS.index(kernel))


def q8_kernel_for():
    """The int8 kernel (a name of Q8_KERNELS) that runs on this CPU under the setting."""
    return Q8_KERNELS[lstmc_q8_kernel_for()]


def _amx_configured_rows():
    """The tile rows AMX is configured for on this thread, 0 when released, as every call of
    lstmc's leaves it (csrc/internal.h lstmc_amx_configure). For tests."""
    return lstmc_amx_configured_rows()


cdef _matrix(a, str name, dtype, Py_ssize_t cols=-1):
    """`a` as a C-contiguous 2-D array of `dtype` (checked, never converted)."""
    if not isinstance(a, _ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 2 or (cols >= 0 and a.shape[1] != cols):
        raise ValueError(f"{name} must be 2-D" + (f" with {cols} columns" if cols >= 0 else "")
                         + f", got shape {a.shape}")
    if a.shape[1] > LSTMC_Q8_MAX_K:
        raise ValueError(f"{name} has {a.shape[1]} columns, more than {LSTMC_Q8_MAX_K} (2^17, "
                         "where int32 sums could overflow)")
    return np.ascontiguousarray(a)


def q8_quantize(a):
    """Rows of float32 `a` (n, K) quantized as reference.quantize_int8 does: (u (n, Kp)
    uint8 holding q + 128, zero-padded (128) to Kp = K rounded up to 4; scale (n,) float32)."""
    x = _matrix(a, "a", np.float32)
    cdef int n = x.shape[0], K = x.shape[1], Kp = lstmc_q8_row_bytes(K)
    q = np.empty((n, Kp), np.uint8)
    scale = np.empty(n, np.float32)
    cdef float[:, ::1] xv = x
    cdef uint8_t[:, ::1] qv = q
    cdef float[::1] sv = scale
    if n:
        with nogil:
            lstmc_q8_quantize_rows(&qv[0, 0], Kp, &sv[0], &xv[0, 0] if K else NULL, K, n, K)
    return q, scale


def q8_pack(wq, w_scale, int H, int G):
    """int8 weights (G H, K) in [-127, 127] and their float32 row scales (G H,) packed for
    q8_product (64-byte aligned uint8, lstmc_q8_pack_bytes(H, K, G) bytes)."""
    if H < 1 or G < 1:
        raise ValueError(f"H and G must be positive, got {H} and {G}")
    w = _matrix(wq, "wq", np.int8)
    if w.shape[0] != G * H:
        raise ValueError(f"wq must have {G} * {H} rows, got {w.shape[0]}")
    if w.shape[1] < 1:
        raise ValueError("wq must have at least one column")
    if (w == -128).any():
        raise ValueError("wq holds -128: int8 weights must lie in [-127, 127]")
    s = np.ascontiguousarray(w_scale, dtype=np.float32)
    if s.shape != (G * H,):
        raise ValueError(f"w_scale must have shape {(G * H,)}, got {s.shape}")
    cdef int K = w.shape[1]
    packed = empty_aligned(lstmc_q8_pack_bytes(H, K, G), np.uint8)
    cdef int8_t[:, ::1] wv = w
    cdef float[::1] sv = s
    cdef uint8_t[::1] pv = packed
    with nogil:
        lstmc_q8_pack_gates(&pv[0], &wv[0, 0], &sv[0], H, K, 0, G, 0, H)
    return packed


def q8_product(aq, a_scale, packed, int K, int H, int G):
    """The dequantised product of q8_quantize rows and q8_pack weights: float32 (n, G H),
    ((sum_k q_a q_w) * a_scale) * w_scale, on the kernel q8_kernel_for() names."""
    a = _matrix(aq, "aq", np.uint8, lstmc_q8_row_bytes(K))
    if H < 1 or G < 1 or K < 1:
        raise ValueError(f"K, H and G must be positive, got {K}, {H} and {G}")
    s = np.ascontiguousarray(a_scale, dtype=np.float32)
    if s.shape != (a.shape[0],):
        raise ValueError(f"a_scale must have shape {(a.shape[0],)}, got {s.shape}")
    if not isinstance(packed, _ndarray) or packed.dtype != np.uint8 or packed.ndim != 1 \
            or <size_t>packed.size != lstmc_q8_pack_bytes(H, K, G):
        raise ValueError(f"packed must be q8_pack's uint8 array of "
                         f"{lstmc_q8_pack_bytes(H, K, G)} bytes for K={K}, H={H}, G={G}")
    cdef int n = a.shape[0], kernel = lstmc_q8_kernel_for()
    out = np.empty((n, G * H), np.float32)
    if n == 0:
        return out
    cdef uint8_t[:, ::1] av = a
    cdef float[::1] sv = s
    cdef const uint8_t[::1] pv = packed
    cdef float[:, ::1] ov = out
    with nogil:
        lstmc_q8_gemm(kernel, n, &av[0, 0], av.shape[1], &sv[0], K, &pv[0], 0, G, H, 1, 0, H,
                      &ov[0, 0], G * H)
    return out


# lstmc.h LSTMC_BF16_*; wide_avx2: the AVX-512 BF16 tiles built for AVX2 (tests)
BF16_KERNELS = ("auto", "c", "avx2", "avx512_bf16", "amx", "wide_avx2")


def _set_bf16_kernel(str kernel):
    """Forces the bfloat16 product's kernel process-wide, one of BF16_KERNELS (a kernel this
    CPU lacks falls back: amx to the widest it has, avx512_bf16 to its tiles built for AVX2
    (wide_avx2), avx2 to c). Forced, amx runs every product; "auto" takes it only for the
    products where it pays (csrc/quant_bf16.c). For tests and benchmarks."""
    if kernel not in BF16_KERNELS:
        raise ValueError(f"kernel must be one of {BF16_KERNELS}, got {kernel!r}")
    lstmc_set_bf16_kernel(BF16_KERNELS.index(kernel))


def bf16_kernel_for():
    """The bfloat16 kernel (a name of BF16_KERNELS) that runs on this CPU under the setting."""
    return BF16_KERNELS[lstmc_bf16_kernel_for()]


def bf16_round(a):
    """Rows of float32 `a` (n, K) rounded to bfloat16 as reference.to_bf16 does: uint16 bits
    (n, Kp), zero-padded to Kp = K rounded up to even."""
    x = _matrix(a, "a", np.float32)
    cdef int n = x.shape[0], K = x.shape[1], Kp = lstmc_bf16_row_elems(K)
    q = np.empty((n, Kp), np.uint16)
    cdef float[:, ::1] xv = x
    cdef uint16_t[:, ::1] qv = q
    if n and K:
        with nogil:
            lstmc_bf16_round_rows(&qv[0, 0], Kp, &xv[0, 0], K, n, K)
    elif n:
        q[:] = 0
    return q


def bf16_pack(wb, int H, int G):
    """bfloat16 weights (G H, K) as uint16 bits packed for bf16_product (64-byte aligned
    uint8, lstmc_bf16_pack_bytes(H, K, G) bytes)."""
    if H < 1 or G < 1:
        raise ValueError(f"H and G must be positive, got {H} and {G}")
    w = _matrix(wb, "wb", np.uint16)
    if w.shape[0] != G * H:
        raise ValueError(f"wb must have {G} * {H} rows, got {w.shape[0]}")
    if w.shape[1] < 1:
        raise ValueError("wb must have at least one column")
    cdef int K = w.shape[1]
    packed = empty_aligned(lstmc_bf16_pack_bytes(H, K, G), np.uint8)
    cdef uint16_t[:, ::1] wv = w
    cdef uint8_t[::1] pv = packed
    with nogil:
        lstmc_bf16_pack_gates(&pv[0], &wv[0, 0], H, K, 0, G, 0, H)
    return packed


def bf16_product(ab, packed, int K, int H, int G):
    """The product of bf16_round rows and bf16_pack weights: float32 (n, G H), float32 sums of
    the bfloat16 operands' products, on the kernel bf16_kernel_for() names."""
    a = _matrix(ab, "ab", np.uint16, lstmc_bf16_row_elems(K))
    if H < 1 or G < 1 or K < 1:
        raise ValueError(f"K, H and G must be positive, got {K}, {H} and {G}")
    if not isinstance(packed, _ndarray) or packed.dtype != np.uint8 or packed.ndim != 1 \
            or <size_t>packed.size != lstmc_bf16_pack_bytes(H, K, G):
        raise ValueError(f"packed must be bf16_pack's uint8 array of "
                         f"{lstmc_bf16_pack_bytes(H, K, G)} bytes for K={K}, H={H}, G={G}")
    cdef int n = a.shape[0], kernel = lstmc_bf16_kernel_for()
    out = np.empty((n, G * H), np.float32)
    if n == 0:
        return out
    cdef uint16_t[:, ::1] av = a
    cdef const uint8_t[::1] pv = packed
    cdef float[:, ::1] ov = out
    with nogil:
        lstmc_bf16_gemm(kernel, n, &av[0, 0], av.shape[1], K, &pv[0], 0, G, H, 1, 0, H,
                        &ov[0, 0], G * H)
    return out


# ---- decoding (csrc/decode.c) ----------------------------------------------------------------
cdef extern from "lstmc.h" nogil:
    int lstmc_log_softmax_f32(float *x, int rows, int cols)
    int lstmc_beam_step(int64_t *tokens, int64_t *parent, double *alive, double *fin_score,
                        int64_t *fin_ref, int64_t *fin_count, uint8_t *done,
                        double *cand_val, int64_t *cand_idx,
                        const float *logp, int B, int K, int V, int t, int64_t eos,
                        double length_penalty)


def log_softmax_rows(float[:, ::1] x not None):
    """Each row of the float32 array x (rows, cols) replaced by its log softmax."""
    cdef int rows = x.shape[0], cols = x.shape[1]
    cdef int status
    if cols < 1:
        raise ValueError("log_softmax_rows needs at least one column")
    if rows == 0:
        return
    with nogil:
        status = lstmc_log_softmax_f32(&x[0, 0], rows, cols)
    _raise_status(status)


def beam_step(int64_t[::1] tokens not None, int64_t[::1] parent not None,
              double[:, ::1] alive not None, double[:, ::1] fin_score not None,
              int64_t[:, ::1] fin_ref not None, int64_t[::1] fin_count not None,
              uint8_t[::1] done not None, double[::1] cand_val not None,
              int64_t[::1] cand_idx not None, const float[:, ::1] logp not None,
              int t, int64_t eos, double length_penalty):
    """One step of beam search (csrc/decode.c) over B sentences x K beams: the shapes are
    those of lstmc.nn.decoding.BeamSearch's buffers, checked here."""
    cdef int B = alive.shape[0], K = alive.shape[1], V = logp.shape[1]
    cdef int status
    if B < 1 or K < 1 or V < 1 or t < 0:
        raise ValueError(f"beam_step: B, K, V must be positive and t >= 0, got {B}, {K}, "
                         f"{V}, {t}")
    if tokens.shape[0] != B * K or parent.shape[0] != B * K or logp.shape[0] != B * K \
            or fin_score.shape[0] != B or fin_score.shape[1] != K \
            or fin_ref.shape[0] != B or fin_ref.shape[1] != K or fin_count.shape[0] != B \
            or done.shape[0] != B or cand_val.shape[0] < 2 * K or cand_idx.shape[0] < 2 * K:
        raise ValueError("beam_step: the buffers' shapes disagree")
    if not 0 <= eos < V:
        raise ValueError(f"beam_step: eos must be a class in 0 .. {V - 1}, got {eos}")
    with nogil:
        status = lstmc_beam_step(&tokens[0], &parent[0], &alive[0, 0], &fin_score[0, 0],
                                 &fin_ref[0, 0], &fin_count[0], &done[0], &cand_val[0],
                                 &cand_idx[0], &logp[0, 0], B, K, V, t, eos, length_penalty)
    _raise_status(status)
