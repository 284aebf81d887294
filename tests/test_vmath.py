"""csrc/vmath.h (the vectorisable float32 exp / sigmoid / tanh) against double-precision libm.

The header is compiled with a tiny C driver that scans 2^22 points of [-100, 100] and
reports the worst error in units in the last place; NaN must propagate and infinities must
saturate."""
import os
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

DRIVER = r"""
#include <math.h>
#include <stdio.h>
#include "vmath.h"
static double ulp(float v) { return (double)nextafterf(fabsf(v), INFINITY) - fabsf(v); }
int main(void) {
    double e = 0, s = 0, t = 0;
    const long n = 1L << 22;
    for (long i = 0; i <= n; i++) {
        const float x = -100.f + 200.f * (float)i / (float)n;
        const double E = exp((double)x), S = 1 / (1 + exp(-(double)x)), T = tanh((double)x);
        if (x > -87.3f && x < 88.3f)   /* exp clamps its argument outside */
            e = fmax(e, fabs(lstmc_expf(x) - E) / ulp((float)E));
        if (S > 1.2e-38)
            s = fmax(s, fabs(lstmc_sigmoidf(x) - S) / ulp((float)S));
        if (T != 0)   /* tanh: ulp-accurate, except absolute 1e-7 where the result is tiny */
            t = fmax(t, fmin(fabs(lstmc_tanhf(x) - T) / ulp((float)T),
                             fabs(lstmc_tanhf(x) - T) / 1e-7));
    }
    printf("%g %g %g\n", e, s, t);
    printf("%d %d %d\n", isnan(lstmc_expf(NAN)), isnan(lstmc_sigmoidf(NAN)), isnan(lstmc_tanhf(NAN)));
    printf("%g %g %g %g %g\n", lstmc_sigmoidf(INFINITY), lstmc_sigmoidf(-INFINITY),
           lstmc_tanhf(INFINITY), lstmc_tanhf(-INFINITY), lstmc_tanhf(0.f));
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
def test_vmath_accuracy(tmp_path):
    src, exe = tmp_path / "vmath_check.c", tmp_path / "vmath_check"
    src.write_text(DRIVER)
    subprocess.run(["gcc", "-std=c99", "-O2", "-fno-trapping-math", "-I", CSRC, str(src), "-o",
                    str(exe), "-lm"], check=True, timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120).stdout.split("\n")
    exp_ulp, sig_ulp, tanh_ulp = map(float, out[0].split())
    assert exp_ulp <= 2 and sig_ulp <= 3 and tanh_ulp <= 3, out[0]
    assert out[1].split() == ["1", "1", "1"], "NaN must propagate"
    sig_inf, sig_minf, tanh_inf, tanh_minf, tanh_zero = map(float, out[2].split())
    assert sig_inf == 1 and 0 <= sig_minf < 1e-37 and tanh_inf == 1 and tanh_minf == -1
    assert tanh_zero == 0
