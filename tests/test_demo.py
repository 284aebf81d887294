"""`python -m lstmc demo` runs end to end (a short budget and a small model) and learns:
held-out bits per character end well below the uniform code length. `demo --save` writes the
model and `python -m lstmc generate` reproduces the demo's own sample from the file; bad
model files and options are clean errors."""
import contextlib
import io as stdio
import re
import subprocess
import sys

import pytest

import lstmc
from lstmc import io
from lstmc.__main__ import main as lstmc_main

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


# ---- demo --save and generate --------------------------------------------------------------
def _run(*args):
    return subprocess.run([sys.executable, "-m", "lstmc", *args], capture_output=True,
                          text=True, timeout=300)


def _main(argv):
    """Runs `python -m lstmc ARGV` in this process and returns what it printed."""
    buf = stdio.StringIO()
    with contextlib.redirect_stdout(buf):
        assert lstmc_main(argv) == 0
    return buf.getvalue().rstrip("\n")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A short run on a small text with --save; returns (model path, the demo's stdout)."""
    d = tmp_path_factory.mktemp("demo")
    text = d / "poem.txt"
    text.write_text("the cat sat on the mat. " * 400)
    model = d / "char model.lstmc"
    res = _run("demo", *SMALL, "--seconds", "2", "--text", str(text), "--prime", "the ",
               "--save", str(model))
    assert res.returncode == 0, res.stderr
    return model, res.stdout


def test_demo_saves_the_model(saved_model):
    model, out = saved_model
    assert f"saved the model to {model}" in out
    config, arrays = io.read(model, kind="lstmc.demo.CharLM")
    assert config["vocab"] == sorted(set(b"the cat sat on the mat. "))
    assert (config["embed"], config["hidden"], config["layers"]) == (16, 32, 1)
    assert config["steps"] > 0 and 0 < config["held_out_bits_per_char"] < 8
    assert arrays["lstm.weight_hh_l0"].shape == (4 * 32, 32)
    assert arrays["embedding.weight"].shape == (len(config["vocab"]), 16)


def test_generate_repeats_the_demos_sample(saved_model):
    """The demo printed a sample from the model in memory (seed 0); generate with the same
    seed, prime, length and temperature, from the file, must print the same text."""
    model, out = saved_model
    demo_sample = out.split("-" * 60 + "\n")[1].rstrip("\n")
    assert demo_sample.startswith("the ")
    res = _run("generate", str(model), "--prime", "the ", "--length", "40", "--seed", "0",
               "--temperature", "0.8")
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip("\n") == demo_sample


def test_generate_samples_from_the_prime(saved_model):
    model, _ = saved_model
    for seed in ("1", "2"):
        text = _main(["generate", str(model), "--prime", "at the", "--length", "25",
                        "--seed", seed])
        assert text.startswith("at the") and len(text) == len("at the") + 25, text
        assert set(text) <= set("the cat sat on the mat. "), text


def test_generate_rejects_bad_model_files(saved_model, tmp_path):
    model, _ = saved_model
    garbage = tmp_path / "garbage.lstmc"
    garbage.write_bytes(b"not a model\n" * 50)
    res = _run("generate", str(garbage))
    assert res.returncode != 0
    assert "not an lstmc file" in res.stderr and "Traceback" not in res.stderr, res.stderr

    damaged = tmp_path / "damaged.lstmc"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF          # inside the weights
    damaged.write_bytes(data)
    checkpoint = tmp_path / "ckpt.lstmc"
    lstmc.save({"epoch": 1}, checkpoint)
    cases = [(damaged, "damaged member"),
             (checkpoint, "file holds lstmc.save, expected lstmc.demo.CharLM"),
             (tmp_path / "missing.lstmc", "cannot read .*missing.lstmc: No such file"),
             (tmp_path, "cannot read .*: Is a directory")]
    for path, message in cases:
        with pytest.raises(SystemExit) as info:
            lstmc_main(["generate", str(path)])
        assert re.search(message, str(info.value.code)), (path, info.value.code)


def test_generate_rejects_weights_that_do_not_fit(saved_model, tmp_path):
    model, _ = saved_model
    config, arrays = io.read(model)
    config["hidden"] = 33
    io.write(tmp_path / "m.lstmc", "lstmc.demo.CharLM", config, arrays)
    with pytest.raises(SystemExit, match="the weights do not fit the model of its config"):
        lstmc_main(["generate", str(tmp_path / "m.lstmc")])
    del config["vocab"]
    io.write(tmp_path / "m.lstmc", "lstmc.demo.CharLM", config, arrays)
    with pytest.raises(SystemExit, match="config must hold vocab"):
        lstmc_main(["generate", str(tmp_path / "m.lstmc")])


def test_bad_sampling_options_are_usage_errors(saved_model, capsys):
    model, _ = saved_model
    for args in (["--temperature", "0"], ["--length", "-1"]):
        with pytest.raises(SystemExit) as info:
            lstmc_main(["generate", str(model), *args])
        assert info.value.code == 2
    assert "invalid positive float value: '0'" in capsys.readouterr().err


def test_save_to_a_missing_directory_fails_before_training(tmp_path):
    res = _run("demo", *SMALL, "--save", str(tmp_path / "no" / "m.lstmc"))
    assert res.returncode != 0 and "cannot write to the directory" in res.stderr
    assert "training for" not in res.stdout


def test_info_reports_the_build(capsys):
    from lstmc.__main__ import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    field = lambda name: re.search(rf"^{name}\s+(.*)$", out, re.M).group(1)
    assert "-O3" in field("build flags") and "-ffast-math" not in field("build flags")
    assert ("-fopenmp" in field("build flags")) == lstmc.openmp_enabled()
    assert field("threads") == (f"{lstmc.get_num_threads()} "
                                f"({lstmc._threads.num_threads_source()})")


# ---- a loss that stops being a number ends the demo with a clear message -------------------
def test_demo_stops_when_the_loss_diverges():
    """An infinite learning rate: Adam's first steps make the weights NaN."""
    res = _run("demo", *SMALL, "--max-bytes", "100000", "--lr", "inf")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert re.search(r"training stopped at step \d+: the loss is nan, .*try a smaller --lr "
                     r"than inf", res.stderr), res.stderr
    assert "held-out" not in res.stdout and "sample" not in res.stdout


def test_demo_stops_at_the_first_non_finite_loss(monkeypatch, capsys):
    import lstmc.demo
    steps = []

    def train_step(*args, **kwargs):
        loss = real(*args, **kwargs)
        steps.append(loss)
        return float("inf") if len(steps) == 3 else loss

    real = lstmc.demo.train_step
    monkeypatch.setattr(lstmc.demo, "train_step", train_step)
    with pytest.raises(SystemExit, match=r"^training stopped at step 3: the loss is inf, "):
        lstmc_main(["demo", *SMALL, "--max-bytes", "100000", "--seconds", "60"])
    assert len(steps) == 3
    assert "held-out" not in capsys.readouterr().out
