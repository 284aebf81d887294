"""Command line: `python -m lstmc demo` (train a character LSTM on real text),
`python -m lstmc generate MODEL` (sample from a model the demo saved),
`python -m lstmc bench` (time lstmc on the benchmark grids, beside PyTorch, ONNX Runtime and
OpenVINO from a source checkout) and
`python -m lstmc convert IN OUT` / `inspect FILE` (model files: .lstmc, .onnx, .keras, .h5) and
`python -m lstmc info` (the build and the machine)."""
import argparse
import platform
import sys


def _cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw",
                                        "avx512_bf16") if x in flags]
    except OSError:
        pass
    return []


def info():
    import numpy
    import scipy

    import lstmc
    from lstmc import _core, _threads

    cap = _core.thread_cap()
    rows = [
        ("lstmc", lstmc.__version__),
        ("python", platform.python_version()),
        ("numpy / scipy", f"{numpy.__version__} / {scipy.__version__}"),
        ("build flags", _core.build_flags()),
        ("OpenMP", "yes" if lstmc.openmp_enabled() else "no (serial build)"),
        ("threads", f"{lstmc.get_num_threads()} ({_threads.num_threads_source()})"
         + (f"; {cap} while cores are contended" if cap else "")),
        ("BLAS (scipy's)", _threads.blas_library() or "not identified"),
        ("CPU", platform.processor() or platform.machine()),
        ("vector features", " ".join(_cpu_features()) or "unknown"),
        ("recurrent kernel", _core.recurrent_kernel_for("float32", 1, 1 << 20, True)
         + " (float32, batch <= 128)"),
        ("int8 kernel", _core.q8_kernel_for() + " (lstmc.quantize)"),
        ("bf16 kernel", _core.bf16_kernel_for() + " (lstmc.quantize)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lstmc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from lstmc import bench, convert, demo

    # each command: (name, help, add_arguments(parser) or None, run(args))
    commands = [
        ("demo", "train a character-level LSTM language model on real text",
         demo.add_arguments, demo.run),
        ("bench", "time lstmc on the benchmark grids, beside the peers (PyTorch, ONNX Runtime, "
         "OpenVINO) when run from a source checkout", bench.add_arguments, bench.run),
        ("generate", "sample text from a model saved by `demo --save`",
         demo.add_generate_arguments, demo.generate),
        ("convert", "write a model file as another kind (.keras / .h5 -> .lstmc / .onnx, "
         ".lstmc -> .onnx, .onnx -> .lstmc)", convert.add_convert_arguments,
         convert.run_convert),
        ("inspect", "a model file's layers, shapes and parameters, and how lstmc runs it",
         convert.add_inspect_arguments, convert.run_inspect),
        ("info", "version, OpenMP, threads, BLAS and CPU features", None, lambda args: info()),
    ]
    runners = {}
    for name, help_text, add_arguments, run in commands:
        p = sub.add_parser(name, help=help_text)
        if add_arguments is not None:
            add_arguments(p)
        runners[name] = run
    args = parser.parse_args(argv)
    runners[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
