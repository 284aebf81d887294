"""`python -m lstmc demo`: a character-level LSTM language model trained on real text.

By default the text is the Python standard library's own source (always present, no
download); `--text FILE` trains on a file of yours. The model is Embedding -> LSTM -> Linear,
trained with Adam on random windows for a fixed time budget, with a live progress line. It
then reports held-out bits per character and samples text from a prime; `--save PATH` keeps
the model, and `python -m lstmc generate PATH` samples from it later. The model and its
helpers are lstmc.charlm's.

Under `mpiexec -n N` the demo trains data-parallel (lstmc.distributed): every rank draws its
own windows (`--batch` of them per rank, so the global batch is N times that), the gradients
are averaged over the ranks before each step, rank 0's clock decides when the budget is
spent, and only rank 0 reports, evaluates, samples and saves.
"""
import math
import os
import shlex
import sys
import sysconfig
import time

import numpy as np

import lstmc
from lstmc import io, nn
from lstmc.charlm import (CharLM, byte_vocab, encode, evaluate, load_model, random_windows,
                          sample, save_model, stdlib_text, train_step)


def _bar(step, elapsed, budget, loss, chars_per_s, width=24):
    done = min(1.0, elapsed / budget)
    fill = int(done * width)
    eta = max(0.0, budget - elapsed)
    return (f"[{'=' * fill}{'.' * (width - fill)}] step {step:5d}  loss {loss:.3f}  "
            f"{loss / math.log(2):.2f} bits/char  {chars_per_s / 1e3:6.1f}k chars/s  "
            f"ETA {eta:4.0f}s ")


def run(args):
    t_start = time.time()
    if args.save:
        _check_writable(args.save)     # before training, not after
    if args.threads:
        lstmc.set_num_threads(args.threads)
    dist = _distributed()
    rank, ranks = (dist.rank(), dist.size()) if dist else (0, 1)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")   # rank 0 reports
    lstmc.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed if ranks == 1 else [args.seed, rank])
    if args.text:
        with open(args.text, "rb") as f:
            raw = f.read()
        source = args.text
    else:
        raw = stdlib_text(args.max_bytes)
        source = f"the Python standard library's source ({sysconfig.get_paths()['stdlib']})"
    if len(raw) < 4 * (args.seq + 1):
        raise SystemExit(f"the text is too short ({len(raw)} bytes) for --seq {args.seq}")
    vocab = byte_vocab(raw)
    data = encode(raw, vocab)
    split = int(len(data) * 0.95)
    train, held = data[:split], data[split:]
    model = CharLM(len(vocab), args.embed, args.hidden, args.layers)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=args.lr)
    if dist:
        dist.broadcast_parameters(model, root=0)
        optimizer = dist.DistributedOptimizer(optimizer)
    loss_fn = nn.CrossEntropyLoss()
    n_params = sum(p.size for p in model.parameters())
    print(f"lstmc {lstmc.__version__} demo: character LSTM language model")
    print(f"text: {source}, {len(raw) / 1e6:.2f} MB, {len(vocab)} distinct bytes; "
          f"held out: last 5 %")
    print(f"model: Embedding({len(vocab)}, {args.embed}) -> LSTM({args.embed}, {args.hidden}, "
          f"layers={args.layers}) -> Linear({args.hidden}, {len(vocab)}), {n_params:,} "
          f"parameters; {lstmc.get_num_threads()} threads"
          + (f" on each of {ranks} MPI ranks" if dist else ""))
    batch = f"batch {args.batch}" if ranks == 1 else \
        f"global batch {args.batch * ranks} ({args.batch} per rank)"
    print(f"training for {args.seconds:.0f} s on windows of {args.seq} characters, {batch}, "
          f"Adam lr {args.lr}")
    budget = args.seconds
    t0 = time.time()
    step, chars, loss_avg = 0, 0, None
    tty = sys.stdout.isatty()
    running = True
    while running:
        x, y = random_windows(rng, train, args.batch, args.seq)
        loss = train_step(model, optimizer, loss_fn, x, y)
        step += 1
        running = time.time() - t0 < budget
        if dist:   # the ranks' mean loss, and rank 0's clock for all: one small all-reduce
            shared = dist.sum_in_place(np.array([loss, running and rank == 0]))
            loss, running = shared[0] / ranks, bool(shared[1])
        if not math.isfinite(loss):   # every later step would be NaN too: stop and say why
            print(flush=True)
            raise SystemExit(f"training stopped at step {step}: the loss is {loss}, not a "
                             f"number the model can learn from (the weights diverged); try a "
                             f"smaller --lr than {args.lr}")
        chars += x.size * ranks
        loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
        elapsed = time.time() - t0
        if tty:       # a live line on a terminal, a line every 50 steps in a log
            print("\r" + _bar(step, elapsed, budget, loss_avg, chars / elapsed), end="",
                  flush=True)
        elif step % 50 == 0:
            print(_bar(step, elapsed, budget, loss_avg, chars / elapsed), flush=True)
    train_time = time.time() - t0
    print(("\r" if tty else "") + _bar(step, train_time, budget, loss_avg, chars / train_time))
    if rank != 0:
        return None
    bpc = evaluate(model, held, args.seq)
    uniform = math.log2(len(vocab))
    print(f"held-out: {bpc:.3f} bits per character (uniform over the vocabulary: "
          f"{uniform:.2f}); trained {step} steps, {chars / 1e6:.2f} M characters")
    text = sample(model, vocab, args.prime, args.sample_length, args.temperature, args.seed)
    print(f"sample (temperature {args.temperature}, prime {args.prime!r}):")
    print("-" * 60)
    print(text)
    print("-" * 60)
    if args.save:
        save_model(args.save, model, vocab, held_out_bits_per_char=float(bpc), steps=step)
        print(f"saved the model to {args.save} ({os.path.getsize(args.save):,} bytes); "
              f"sample from it with: python -m lstmc generate {shlex.quote(args.save)} "
              f"--prime {shlex.quote(args.prime)}")
    print(f"total time {time.time() - t_start:.1f} s")
    return bpc


def _distributed():
    """lstmc.distributed, joined, when mpiexec started this process; else None."""
    from lstmc.distributed.mpi import started_by_mpiexec
    if not started_by_mpiexec():
        return None
    import lstmc.distributed as dist
    dist.init()
    return dist if dist.size() > 1 else None


def _check_writable(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise SystemExit(f"--save {path}: cannot write to the directory {directory}")
    if os.path.isdir(path):
        raise SystemExit(f"--save {path}: is a directory")


def generate(args):
    """`python -m lstmc generate MODEL`: prints a sample from a model saved by `demo --save`."""
    try:
        model, config = load_model(args.model)
    except io.FormatError as e:
        raise SystemExit(f"python -m lstmc generate: {e}") from None
    except OSError as e:
        raise SystemExit(f"python -m lstmc generate: cannot read {args.model}: "
                         f"{e.strerror}") from None
    unknown = sorted(set(args.prime.encode()) - set(config["vocab"]))
    if unknown:
        print(f"note: the model never saw the bytes {bytes(unknown)!r} of the prime; they "
              "are shown but not fed to it", file=sys.stderr)
    print(sample(model, config["vocab"], args.prime, args.length, args.temperature,
                 args.seed))


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


# argparse names the type in its message: "invalid positive float value: '0'"
_positive_float.__name__ = "positive float"
_non_negative_int.__name__ = "non-negative int"


def add_generate_arguments(parser):
    parser.add_argument("model", help="a model file written by `python -m lstmc demo --save`")
    parser.add_argument("--prime", default="def ", help="start of the sample (default 'def ')")
    parser.add_argument("--length", type=_non_negative_int, default=300,
                        help="characters to generate after the prime (default 300)")
    parser.add_argument("--temperature", type=_positive_float, default=0.8,
                        help="softmax temperature: lower is more conservative (default 0.8)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed (default: a different sample each run)")


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="training time budget in seconds (default 150: about 2.6 minutes "
                             "in all)")
    parser.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    parser.add_argument("--layers", type=int, default=1, help="LSTM layers")
    parser.add_argument("--embed", type=int, default=64, help="embedding size")
    parser.add_argument("--seq", type=int, default=100, help="characters per training window")
    parser.add_argument("--batch", type=int, default=32, help="windows per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--threads", type=int, default=0, help="threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", help="train on this file instead of the standard library")
    parser.add_argument("--max-bytes", type=int, default=4_000_000,
                        help="how much standard-library source to read")
    parser.add_argument("--prime", default="def ", help="start of the generated sample")
    parser.add_argument("--sample-length", type=_non_negative_int, default=300)
    parser.add_argument("--temperature", type=_positive_float, default=0.8)
    parser.add_argument("--save", metavar="PATH",
                        help="save the trained model (for `python -m lstmc generate PATH`)")
