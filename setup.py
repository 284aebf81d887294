"""Build of lstmc's extension: the C kernels in csrc/ plus the Cython boundary lstmc/_core.pyx.

Build-time decisions, made once here:
- OpenMP: probed by compiling and running a tiny program with -fopenmp. Used when it works;
  otherwise the build goes on serial with a warning (lstmc.openmp_enabled() then says False).
- BLAS integer width: scipy's cython_blas declares its integer type; an ILP64 scipy
  (64-bit `blas_int`) gets -DLSTMC_BLAS_ILP64 so the C pointer table matches it.
- Flags: portable -O3, no -ffast-math. -fno-trapping-math only lets the compiler turn the
  selects of the activation code into vector blends (values, NaN and rounding are unchanged;
  lstmc never reads floating-point exception flags). Cell kernels carry their own AVX2/FMA
  clones (csrc/internal.h, LSTMC_DISPATCH). LSTMC_NATIVE=1 opts into -march=native.
  LSTMC_MAX_ISA=x86-64-v3 (or baseline) builds no code past that level, so that a build on a
  wider CPU runs what narrower CPUs run (tests/test_isa_levels.py).
  LSTMC_SANITIZE=address,undefined (either or both) builds with AddressSanitizer /
  UndefinedBehaviorSanitizer for testing (.ci/run): every finding aborts (UBSan does not
  recover). Load the ASan runtime first: LD_PRELOAD=$(gcc -print-file-name=libasan.so)
  PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 (Python's own allocations are not leaks).
  Python's own CFLAGS come first and carry -fwrapv (signed overflow wraps): a vector loop
  indexed by `2 * H + u` then cannot be proven contiguous and GCC loads element by element,
  so the kernels take such offsets once, outside their loops (csrc/lstm.inc).
"""
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import warnings

from setuptools import Extension, setup

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0);
    return n > 0 ? 0 : 1;
}
"""


# LSTMC_SANITIZE's accepted names (gcc's and clang's -fsanitize= values)
SANITIZERS = ("address", "undefined")

# LSTMC_MAX_ISA -> the macro that caps the kernels (csrc/internal.h)
MAX_ISA_MACROS = {"x86-64-v3": "LSTMC_MAX_ISA_V3", "baseline": "LSTMC_NO_DISPATCH"}


def compiler():
    return (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()


def openmp_works():
    """Compile and run a tiny OpenMP program; True when it builds and runs."""
    if os.environ.get("LSTMC_NO_OPENMP") == "1":
        return False
    tmp = tempfile.mkdtemp(prefix="lstmc-omp-")
    try:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        built = subprocess.run(compiler() + ["-fopenmp", src, "-o", exe],
                               capture_output=True, timeout=120)
        if built.returncode != 0:
            return False
        ran = subprocess.run([exe], capture_output=True, timeout=60)
        return ran.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scipy_blas_is_ilp64():
    """True when scipy.linalg.cython_blas takes 64-bit integers (its pxd says so)."""
    import scipy.linalg

    pxd = os.path.join(os.path.dirname(scipy.linalg.__file__), "cython_blas.pxd")
    with open(pxd) as f:
        text = f.read()
    m = re.search(r"ctypedef\s+([\w ]+?)\s+blas_int\b", text)
    return bool(m) and ("64" in m.group(1) or "long" in m.group(1))


def extensions():
    from Cython.Build import cythonize

    # -g0: no DWARF in the shipped library (2.3 MB -> about 0.5 MB; symbols stay for perf)
    compile_args = ["-O3", "-g0", "-Wall", "-fno-trapping-math"]
    link_args = []
    macros = []
    if openmp_works():
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        warnings.warn("lstmc: OpenMP not available; building the kernels single-threaded")
    if scipy_blas_is_ilp64():
        macros.append(("LSTMC_BLAS_ILP64", "1"))
    if os.environ.get("LSTMC_NATIVE") == "1":
        compile_args.append("-march=native")
    max_isa = os.environ.get("LSTMC_MAX_ISA")
    if max_isa:
        if max_isa not in MAX_ISA_MACROS:
            raise SystemExit(f"LSTMC_MAX_ISA must be one of {', '.join(MAX_ISA_MACROS)}, "
                             f"got {max_isa!r}")
        macros.append((MAX_ISA_MACROS[max_isa], "1"))
    sanitize = os.environ.get("LSTMC_SANITIZE")
    if sanitize:
        names = sanitize.split(",")
        if not set(names) <= set(SANITIZERS):
            raise SystemExit(f"LSTMC_SANITIZE must be a comma-separated list of "
                             f"{', '.join(SANITIZERS)}, got {sanitize!r}")
        flags = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all",
                 "-fno-omit-frame-pointer"]
        compile_args += flags + ["-g"]   # -g after -g0: line numbers in the reports
        link_args += flags
    # what `python -m lstmc info` reports as the build (a C string literal)
    described = " ".join(compile_args + [f"-D{k}={v}" for k, v in macros])
    macros.append(("LSTMC_BUILD_FLAGS", '"' + described.replace('"', "") + '"'))
    ext = Extension(
        "lstmc._core",
        sources=["lstmc/_core.pyx", "csrc/blas.c", "csrc/seq.c", "csrc/lstm.c", "csrc/gru.c",
                 "csrc/rnn.c", "csrc/recur.c", "csrc/quant.c", "csrc/quant_bf16.c",
                 "csrc/decode.c"],
        include_dirs=["csrc"],
        depends=["csrc/lstmc.h", "csrc/internal.h", "csrc/dtype.h", "csrc/vmath.h",
                 "csrc/seq.inc", "csrc/lstm.inc", "csrc/gru.inc", "csrc/rnn.inc",
                 "csrc/recur.inc", "csrc/act.inc"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return cythonize([ext], language_level=3, compiler_directives={"embedsignature": True})


if __name__ == "__main__":
    setup(ext_modules=extensions())
