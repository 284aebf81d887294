"""`python -m lstmc demo` runs end to end (a short budget and a small model) and learns:
held-out bits per character end well below the uniform code length."""
import re
import subprocess
import sys

SMALL = ["--seconds", "4", "--hidden", "32", "--embed", "16", "--seq", "24", "--batch", "8",
         "--sample-length", "40"]


def _demo(*args):
    res = subprocess.run([sys.executable, "-m", "lstmc", "demo", *SMALL, *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    m = re.search(r"held-out: ([0-9.]+) bits per character \(uniform over the vocabulary: "
                  r"([0-9.]+)\)", res.stdout)
    assert m, res.stdout
    return float(m.group(1)), float(m.group(2)), res.stdout


def test_demo_on_the_standard_library_learns():
    bpc, uniform, out = _demo("--max-bytes", "300000")
    assert bpc < uniform - 1.5, out
    assert "sample (temperature 0.8, prime 'def ')" in out and "total time" in out


def test_demo_on_a_users_file(tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("the cat sat on the mat. " * 400)
    bpc, uniform, out = _demo("--text", str(text), "--prime", "the ")
    assert bpc < uniform - 1.5, out
