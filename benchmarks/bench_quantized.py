"""lstmc's int8 and bf16 inference beside float32 and the peers' reduced-precision runtimes:
`python benchmarks/bench_quantized.py` (also `python -m lstmc bench --quantized`).

Per row (an eval-mode forward of one layer; a "step_" row: a stream of batch 1 stepped one
timestep a call, in ms per step, each library's own streaming call: lstmc's `step`, torch's
module on (x_t, state), ONNX Runtime's and OpenVINO's one-step graph with its state fed back)
and thread count, medians of interleaved blocks of calls, in ms:

* lstmc f32: lstmc.nn's module; lstmc int8 / bf16: `lstmc.quantize(module, dtype)` of it;
* torch f32, and `torch.ao.quantization.quantize_dynamic` of it with qint8 and float16;
* ORT f32 on the ONNX model of the same weights (peers.onnx_model), and ORT int8: that file
  through `onnxruntime.quantization.quantize_dynamic` (QInt8 weights, per channel;
  DynamicQuantizeLSTM; ORT leaves GRU float, so GRU rows have none);
* OpenVINO bf16 on the same file (INFERENCE_PRECISION_HINT bf16, its default on CPUs with
  AVX-512 BF16; f32 where the CPU has no bf16, which the table then says).

Each column's error is max |y - y_lstmc_f32| over the row's output. The issue's goals
(issue 21): at batch <= 4 with W_hh >= 1 MB, int8 <= 0.45x lstmc f32, <= 0.5x the best float32
peer, <= 0.6x the best int8 peer; at batch 16-64 and at hidden sizes 32-128, int8 never
slower than lstmc f32; bf16 <= 0.65x lstmc f32 at batch <= 4 with W_hh >= 1 MB and never
slower than OpenVINO's bf16 (on CPUs with BF16) at batch 1 to 32.
"""
import argparse
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

ROWS = {  # name: (cell, I, H, B, T)
    "lstm_h512_b1_t25": ("lstm", 512, 512, 1, 25),
    "lstm_h512_b4_t25": ("lstm", 512, 512, 4, 25),
    "lstm_h1024_b1_t25": ("lstm", 1024, 1024, 1, 25),
    "lstm_h1024_b4_t25": ("lstm", 1024, 1024, 4, 25),
    "lstm_h256_b1_t150": ("lstm", 256, 256, 1, 150),
    "gru_h512_b1_t25": ("gru", 512, 512, 1, 25),
    "gru_h512_b4_t25": ("gru", 512, 512, 4, 25),
    "lstm_h512_b16_t25": ("lstm", 512, 512, 16, 25),
    "lstm_h512_b64_t25": ("lstm", 512, 512, 64, 25),
    "lstm_i128_h256_b32_t100": ("lstm", 128, 256, 32, 100),
    "lstm_h64_b1_t50": ("lstm", 64, 64, 1, 50),
    "lstm_h128_b4_t50": ("lstm", 128, 128, 4, 50),
    "step_lstm_h512_b1": ("lstm", 512, 512, 1, 50),     # T: the steps of one timed block
    "step_lstm_h1024_b1": ("lstm", 1024, 1024, 1, 20),
    "step_gru_h512_b1": ("gru", 512, 512, 1, 50),
}
COLUMNS = ("lstmc f32", "lstmc int8", "lstmc bf16", "torch f32", "torch qint8", "torch fp16", "ORT f32",
           "ORT int8", "OpenVINO bf16")
INT8 = ("torch qint8", "ORT int8")
F32 = ("torch f32", "ORT f32")


def _has(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _bf16_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512_bf16" in f.read()
    except OSError:
        return False


def _stepped(step, T):
    """A call that streams x's T steps through step(x_t) from a fresh state: y (T, B, H)"""
    def call():
        return np.stack([np.asarray(y) for y in step()])
    return call


def build(cell, I, H, B, T, threads, tmp, stream=False):
    """{column: (set_threads, call -> y (T, B, H))} for one row at `threads` threads; with
    `stream`, each call steps through the T timesteps one call at a time."""
    import lstmc
    from peers import onnx_model, openvino_session, ort_session

    lstmc.manual_seed(0)
    m = getattr(lstmc.nn, cell.upper())(I, H).eval()
    q = lstmc.quantize(m, "int8")
    qb = lstmc.quantize(m, "bf16")
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    lstmc_threads = lambda: lstmc.set_num_threads(threads)  # noqa: E731

    def lstmc_call(mod):
        if not stream:
            return lambda: mod(x)[0]

        def steps():
            state = mod.initial_state(B)
            # step's y is the state's own buffer, rewritten by the next step
            return [mod.step(x[t], state)[0].copy() for t in range(T)]
        return _stepped(steps, T)
    runners = {"lstmc f32": (lstmc_threads, lstmc_call(m)),
               "lstmc int8": (lstmc_threads, lstmc_call(q)),
               "lstmc bf16": (lstmc_threads, lstmc_call(qb))}
    sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
    if _has("torch"):
        import torch
        t = getattr(torch.nn, cell.upper())(I, H)
        t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
        t.eval()
        with warnings.catch_warnings():   # torch.ao.quantization's deprecation notices
            warnings.simplefilter("ignore")
            quant = torch.ao.quantization.quantize_dynamic
            kinds = {torch.nn.LSTM, torch.nn.GRU}
            # quantize_dynamic swaps a model's children, never the model itself
            models = {"torch f32": t,
                      "torch qint8": quant(torch.nn.Sequential(t), kinds, dtype=torch.qint8),
                      "torch fp16": quant(torch.nn.Sequential(t), kinds, dtype=torch.float16)}
        xt = torch.from_numpy(x)

        def torch_call(mod):
            def call():
                with torch.no_grad():
                    return mod(xt)[0].numpy()
            if not stream:
                return call
            layer = mod[0] if isinstance(mod, torch.nn.Sequential) else mod

            def steps():
                out, state = [], None
                with torch.no_grad():
                    for t in range(T):
                        y, state = layer(xt[t:t + 1], state)
                        out.append(y[0].numpy())
                return out
            return _stepped(steps, T)
        for name, mod in models.items():
            runners[name] = (lambda: torch.set_num_threads(threads), torch_call(mod))
    if _has("onnx"):
        model = onnx_model(cell, sd, I, H, with_state=stream)
        feed = {"x": x}
        names = ("h0_l0", "c0_l0") if cell == "lstm" else ("h0_l0",)
        outs = ["y", "h_n"] + (["c_n"] if cell == "lstm" else [])

        def onnx_call(run):
            if not stream:
                return lambda: run(["y"], feed)[0]

            def steps():
                state = [np.zeros((1, B, H), np.float32) for _ in names]
                out = []
                for t in range(T):
                    y, *state = run(outs, {"x": x[t:t + 1], **dict(zip(names, state))})
                    out.append(y[0])
                return out
            return _stepped(steps, T)
        if _has("onnxruntime"):
            f32 = ort_session(model, threads)
            runners["ORT f32"] = (None, onnx_call(f32.run))
            if cell == "lstm":
                import onnx
                from onnxruntime.quantization import QuantType, quantize_dynamic
                src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
                onnx.save(model, src)
                root = logging.getLogger()          # its advice to pre-process, every time
                level = root.level
                root.setLevel(logging.ERROR)
                try:
                    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=["LSTM"])
                finally:
                    root.setLevel(level)
                int8 = ort_session(onnx.load(dst), threads)
                runners["ORT int8"] = (None, onnx_call(int8.run))
        if _has("openvino"):
            ov = openvino_session(model, threads, "bf16" if _bf16_cpu() else "f32")
            runners["OpenVINO bf16"] = (None, onnx_call(ov))
    return runners


def measure(row, threads, rounds, calls, quiet):
    """{column: (median ms, max |y - y_lstmc_f32|)} of one row at `threads` threads."""
    per = ROWS[row][4] if row.startswith("step_") else 1    # a step row: ms per step
    with tempfile.TemporaryDirectory() as tmp:
        runners = build(*ROWS[row], threads, tmp, stream=per > 1)
        ref = None
        errors = {}
        for name, (set_threads, fn) in runners.items():      # warm up, and the outputs
            if set_threads:
                set_threads()
            y = np.asarray(fn())
            y = y.reshape(y.shape[0], -1)
            if ref is None:
                ref = y
            errors[name] = float(np.abs(y - ref).max())
        times = {k: [] for k in runners}
        for r in range(rounds):
            order = list(runners) if r % 2 == 0 else list(runners)[::-1]
            for name in order:
                set_threads, fn = runners[name]
                if set_threads:
                    set_threads()
                time.sleep(quiet)     # the previous block's pool goes quiet first
                fn()
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)) * 1e3 / per, errors[k]) for k, v in times.items()}


def table(results):
    lines = ["| row | thr | " + " | ".join(f"{c} ms (err)" for c in COLUMNS)
             + " | int8 / lstmc f32 | int8 / best f32 peer | int8 / best int8 peer "
             "| bf16 / lstmc f32 | bf16 / OpenVINO bf16 |",
             "|---|---:|" + "---:|" * (len(COLUMNS) + 5)]
    for (row, threads), r in results.items():
        cells = []
        for c in COLUMNS:
            if c in r:
                ms, err = r[c]
                cells.append(f"{ms:.3f}" + ("" if c == "lstmc f32" else f" ({err:.1e})"))
            else:
                cells.append("—")
        mine = r["lstmc int8"][0]
        ratio = lambda names: min((r[n][0] for n in names if n in r), default=None)  # noqa
        f32, int8, ov = ratio(F32), ratio(INT8), ratio(("OpenVINO bf16",))
        bf16 = r["lstmc bf16"][0]
        lines.append(f"| {row} | {threads} | " + " | ".join(cells) + " | "
                     f"{mine / r['lstmc f32'][0]:.2f} | "
                     f"{'—' if f32 is None else f'{mine / f32:.2f}'} | "
                     f"{'—' if int8 is None else f'{mine / int8:.2f}'} | "
                     f"{bf16 / r['lstmc f32'][0]:.2f} | "
                     f"{'—' if ov is None else f'{bf16 / ov:.2f}'} |")
    return "\n".join(lines)


def add_arguments(ap):
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated rows (default: all): " + ", ".join(ROWS))
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=10, help="timed calls per round and column")
    ap.add_argument("--quiet", type=float, default=0.05,
                    help="seconds of quiet before each block of calls (default 0.05)")


def run(args):
    import lstmc
    from lstmc import _core

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    threads = [int(t) for t in args.threads.split(",")]
    print(f"lstmc {lstmc.__version__}, int8 kernel {_core.q8_kernel_for()}, bf16 kernel "
          f"{_core.bf16_kernel_for()}; "
          f"{os.cpu_count()} CPUs; bf16 CPU: {_bf16_cpu()}; load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    for n in threads:
        for row in rows:
            results[(row, n)] = measure(row, n, args.rounds, args.calls, args.quiet)
            print(f"[{n} thr] {row}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in
                                                   results[(row, n)].items()), flush=True)
    print()
    print(table(results))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
