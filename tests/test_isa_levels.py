"""Every instruction-set level of the kernels, on whatever CPU runs the suite.

The build dispatches at run time (csrc/internal.h LSTMC_DISPATCH, recur.c
lstmc_recur_kernel_for), so a suite on an AVX-512 CPU runs only the AVX-512 cell kernels, and
one on an AVX2 CPU never the AVX-512 ones. The recurrent product's kernels can be forced in
process (tests/test_recurrent_product.py); the cell kernels are GCC clones picked by the
loader. Here the extension is built again with LSTMC_MAX_ISA (setup.py), which leaves out every
level past the cap, and the cell and recurrent-product tests run on that build in a
subprocess: "x86-64-v3" is what an AVX2-only CPU runs, "baseline" what a CPU without AVX2 runs
(portable kernels throughout).
"""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/test_kernels.py", "tests/test_recurrent_product.py",
         "tests/test_quantized_product.py", "tests/test_bf16_product.py"]
EXPECTED_KERNEL = {"x86-64-v3": "packed_avx2", "baseline": "blas"}
# forced AVX-512 VNNI: its tiles built for AVX2 (so the suite below runs them), or C
EXPECTED_Q8_KERNEL = {"x86-64-v3": "wide_avx2", "baseline": "c"}
EXPECTED_BF16_KERNEL = {"x86-64-v3": "wide_avx2", "baseline": "c"}


pytestmark = [
    pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "setup.py")),
                       reason="needs the source tree"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
    pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                       reason="run-time dispatch is built on x86-64 Linux only"),
]


def build_capped(tmp_path, level):
    """lstmc's Python package with an extension built under LSTMC_MAX_ISA=level, in tmp_path."""
    lib = tmp_path / "lib"
    shutil.copytree(os.path.join(ROOT, "lstmc"), lib / "lstmc",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    env = dict(os.environ, LSTMC_MAX_ISA=level)
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "-j", "2", "--build-lib", str(lib),
         "--build-temp", str(tmp_path / "temp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return lib


@pytest.mark.parametrize("level", ["x86-64-v3", "baseline"])
def test_kernels_at_a_capped_level(tmp_path, level):
    if level == "x86-64-v3" and not {"avx2", "fma"} <= set(cpu_flags()):
        pytest.skip("the CPU cannot run x86-64-v3 code")
    lib = build_capped(tmp_path, level)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), os.path.join(ROOT, "tests")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import lstmc, numpy; from lstmc import _core; "
         "print(lstmc.__file__); print(_core.build_flags()); "
         "print(_core.recurrent_kernel_for(numpy.float32, 4, 100, True)); "
         "_core._set_q8_kernel('avx512_vnni'); print(_core.q8_kernel_for()); "
         "_core._set_bf16_kernel('avx512_bf16'); print(_core.bf16_kernel_for())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    where, flags, kernel, q8_kernel, bf16_kernel = probe.stdout.split("\n")[:5]
    assert where.startswith(str(lib))                  # the capped build, not the tree's
    macro = {"x86-64-v3": "LSTMC_MAX_ISA_V3", "baseline": "LSTMC_NO_DISPATCH"}[level]
    assert macro in flags
    assert kernel == EXPECTED_KERNEL[level]
    assert q8_kernel == EXPECTED_Q8_KERNEL[level]
    assert bf16_kernel == EXPECTED_BF16_KERNEL[level]
    tests = [os.path.join(ROOT, t) for t in TESTS]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "--rootdir", str(tmp_path), *tests],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout and " failed" not in ran.stdout
