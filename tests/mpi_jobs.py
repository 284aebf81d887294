"""Jobs that tests/test_distributed.py runs under `mpiexec -n N` (or alone, as one process):
`python tests/mpi_jobs.py JOB [ARG ...]`. Each rank writes its findings as JSON to
$LSTMC_RESULTS/rank<r>.json; the tests compare them across ranks and with a one-process run.
Every job runs lstmc on one thread per rank."""
import hashlib
import json
import os
import signal
import sys

import numpy as np

import lstmc
import lstmc.distributed as dist
from lstmc import nn

dist.init()
lstmc.set_num_threads(1)
RANK, SIZE = dist.rank(), dist.size()


def report(**findings):
    path = os.path.join(os.environ["LSTMC_RESULTS"], f"rank{RANK}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(findings, f)
    os.replace(path + ".tmp", path)


def digest(model):
    return hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes()
                                   for v in model.state_dict().values())).hexdigest()


def flat(model):
    return np.concatenate([v.ravel() for v in model.state_dict().values()]).tolist()


def expect_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


# ---- jobs --------------------------------------------------------------------------------
def collectives():
    a = np.array([RANK + 1.0, -RANK, 2.5], dtype=np.float32)
    ints = np.arange(4, dtype=np.int32) * (RANK + 1)
    report(
        average=dist.allreduce(a).tolist(), average_dtype=str(dist.allreduce(a).dtype),
        sum=dist.allreduce(a, op="sum").tolist(), min=dist.allreduce(a, op="min").tolist(),
        max=dist.allreduce(a, op="max").tolist(), int_sum=dist.allreduce(ints, "sum").tolist(),
        int_average=dist.allreduce(ints).tolist(),
        scalar=float(dist.allreduce(float(RANK), op="sum")),
        bools={op: dist.allreduce(np.array([True, RANK == 0]), op).tolist()
               for op in ("sum", "average", "min", "max")},
        input_unchanged=a.tolist() == [RANK + 1.0, -RANK, 2.5],
        broadcast=dist.broadcast(np.arange(3.0) + 10 * RANK, root=SIZE - 1).tolist(),
        broadcast_none=dist.broadcast(np.eye(2) if RANK == 0 else None).tolist(),
        obj=dist.broadcast_object({"from": RANK, "t": (1, "x")}, root=SIZE - 1),
        gathered=dist.allgather_object(RANK * 10),
        shape_mismatch=expect_error(dist.allreduce, np.zeros(3 + (RANK == 1))),
        dtype_mismatch=expect_error(dist.allreduce,
                                    np.zeros(3, np.float32 if RANK else np.float64)),
        bad_op=expect_error(dist.allreduce, a, op="mean"),
        bad_root=expect_error(dist.broadcast, a, root=SIZE),
        after_errors=dist.allreduce(np.ones(1), op="sum").tolist(),   # still in step
        rank=RANK, size=SIZE, local_rank=dist.local_rank(), local_size=dist.local_size())


def broadcasts():
    lstmc.manual_seed(RANK)          # a different start on every rank
    model = Classifier()
    model.eval()
    model(np.zeros((1, 2), np.int64))   # packed weights: released before the broadcast
    before = digest(model)
    dist.broadcast_parameters(model, root=0)
    after = digest(model)
    eval_out = model(np.ones((1, 2), np.int64)).ravel().tolist()   # packed again
    opt = lstmc.optim.Adam(model.parameters(), lr=0.01 * (RANK + 1))
    model.train()
    out = model(np.ones((2, 3), np.int64))
    model.backward(np.ones_like(out) * (RANK + 1))
    opt.step()                        # a different state on every rank
    dist.broadcast_optimizer_state(opt, root=0)
    moments = opt.state_dict()["state"][2]["exp_avg"]
    wrong = nn.LSTM(3, 4 + (RANK == 1))
    report(before=before, after=after, eval_out=eval_out,
           lr=opt.param_groups[0]["lr"],
           moments=hashlib.sha256(moments.tobytes()).hexdigest(),
           mismatch=expect_error(dist.broadcast_parameters, wrong))


class Classifier(nn.Module):
    """Embedding -> (Dropout) -> LSTM -> the last step -> Linear."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, idx):
        out, _ = self.lstm(self.dropout(self.embedding(idx)))
        self._shape = out.shape
        return self.fc(out[:, -1])

    def backward(self, dlogits):
        dout = np.zeros(self._shape, np.float32)
        dout[:, -1] = self.fc.backward(dlogits)
        dx, _ = self.lstm.backward(dout)
        return self.embedding.backward(self.dropout.backward(dx))


def _data(n=36, T=5):
    rng = np.random.default_rng(7)
    return rng.integers(0, 11, (n, T)), rng.integers(0, 3, n)


def torch_face(global_batch="12", epochs="2", clip="1"):
    """Trains with DistributedOptimizer + DistributedSampler; alone (one process) it trains
    on each whole global batch in the same order. Reports the parameters and their hash
    after every step."""
    global_batch, epochs, clip = int(global_batch), int(epochs), float(clip)
    x, y = _data()
    lstmc.manual_seed(0)
    model = Classifier()
    dist.broadcast_parameters(model)
    opt = dist.DistributedOptimizer(lstmc.optim.Adam(model.parameters(), lr=0.01))
    sched = lstmc.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    sampler = dist.DistributedSampler(len(x), shuffle=True, seed=3)
    hashes, losses = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for idx in sampler.batches(global_batch // SIZE):
            model.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            model.backward(loss_fn.backward())
            if clip:
                opt.synchronize()
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            hashes.append(digest(model))
            losses.append(float(loss))
        sched.step()
    report(hashes=hashes, params=flat(model), lr=opt.param_groups[0]["lr"], steps=len(hashes))


def keras_face(n="13", batch="4", epochs="3"):
    """Sequential.fit(distributed=True) (or plain fit alone) on masked sequences of
    varied lengths; a last batch smaller than the number of ranks when n % batch < SIZE."""
    from lstmc.callbacks import ModelCheckpoint
    from lstmc.layers import LSTM, Dense, Embedding
    from lstmc.models import Sequential
    n, batch, epochs = int(n), int(batch), int(epochs)
    lstmc.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.integers(1, 20, (n, 6))
    for i in range(n):
        x[i, :rng.integers(0, 5)] = 0
    y = rng.integers(0, 2, n)
    model = Sequential([Embedding(20, 8, mask_zero=True), LSTM(5), Dense(1, "sigmoid")])
    model.build((None, 6))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    ckpt_dir = os.path.join(os.environ["LSTMC_TEST_DIR"], f"rank{RANK}")
    os.makedirs(ckpt_dir, exist_ok=True)
    history = model.fit(x, y, batch_size=batch, epochs=epochs, validation_split=0.25,
                        distributed=SIZE > 1, verbose=1,
                        callbacks=[ModelCheckpoint(os.path.join(ckpt_dir, "m.lstmc"),
                                                   monitor="loss")])
    report(params=np.concatenate([w.ravel() for w in model.get_weights()]).tolist(),
           hash=digest(model), history=history.history,
           checkpoint=os.path.exists(os.path.join(ckpt_dir, "m.lstmc")))


def keras_functional(n="13", batch="4", epochs="2"):
    """A functional Model's fit(distributed=True) (or plain fit alone): an encoder-decoder
    with attention over masked sequences and a second output with its own loss."""
    from lstmc.layers import LSTM, Attention, Concatenate, Dense, Embedding, Input
    from lstmc.models import Model
    n, batch, epochs = int(n), int(batch), int(epochs)
    lstmc.manual_seed(0)
    rng = np.random.default_rng(2)
    x_src, x_tgt = rng.integers(1, 12, (n, 5)), rng.integers(1, 12, (n, 4))
    for i in range(n):
        x_src[i, 5 - rng.integers(0, 3):] = 0
    y, y_len = x_tgt % 3, (x_src > 0).sum(axis=1, keepdims=True).astype(np.float32)
    src, tgt = Input(shape=(None,), dtype="int32"), Input(shape=(None,), dtype="int32")
    enc, h, c = LSTM(6, return_sequences=True, return_state=True)(
        Embedding(12, 4, mask_zero=True)(src))
    dec = LSTM(6, return_sequences=True)(Embedding(12, 4, mask_zero=True)(tgt),
                                         initial_state=[h, c])
    out = Dense(3, activation="softmax", name="tags")(Concatenate()([dec, Attention()([dec, enc])]))
    model = Model([src, tgt], [out, Dense(1, name="length")(h)])
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"], metrics=[["accuracy"], []])
    history = model.fit([x_src, x_tgt], [y, y_len], batch_size=batch, epochs=epochs,
                        validation_split=0.25, distributed=SIZE > 1, verbose=0)
    report(params=np.concatenate([w.ravel() for w in model.get_weights()]).tolist(),
           hash=digest(model), history=history.history)


def resume(directory, crash_at="-1", resume_from="", reseed=""):
    """Trains 3 epochs with dropout and a numpy Generator of its own (noise added to the
    logits), checkpointing after every 2 steps; `crash_at` step: rank 1 raises there;
    `resume_from`: starts from that checkpoint (`reseed`: then reseeds the noise)."""
    crash_at = int(crash_at)
    x, y = _data()
    lstmc.manual_seed(0)
    model = Classifier(dropout=0.3)
    dist.broadcast_parameters(model)
    opt = dist.DistributedOptimizer(lstmc.optim.Adam(model.parameters(), lr=0.01))
    sampler = dist.DistributedSampler(len(x), shuffle=True, seed=5)
    noise = np.random.default_rng(100 + RANK)
    loss_fn = nn.CrossEntropyLoss()
    step, start_epoch = 0, 0
    if resume_from:
        extra = dist.load_checkpoint(resume_from, model, opt, sampler, rngs=[noise])
        step, start_epoch = extra["step"], extra["epoch"]
        if reseed:
            noise = np.random.default_rng(200 + RANK)
    for epoch in range(start_epoch, 3):
        sampler.set_epoch(epoch)
        for idx in sampler.batches(4):
            model.zero_grad()
            logits = model(x[idx]) + noise.normal(0, 0.1, (len(idx), 3)).astype(np.float32)
            loss_fn(logits, y[idx])
            model.backward(loss_fn.backward())
            opt.step()
            step += 1
            if step == crash_at and RANK == 1:
                raise RuntimeError(f"rank 1 fails at step {step}")
            if step % 2 == 0:
                dist.save_checkpoint(os.path.join(directory, "ckpt.lstmc"), model, opt,
                                     sampler, rngs=[noise], step=step, epoch=epoch)
    report(hash=digest(model), steps=step)


def fail(how, at_step="2"):
    """Rank 1 raises, or kills itself with SIGKILL, at `at_step` while the others go on
    into their next all-reduce; with "none" the job trains until interrupted."""
    model = nn.LSTM(3, 4)
    opt = dist.DistributedOptimizer(lstmc.optim.SGD(model.parameters(), lr=0.1))
    for step in range(1, 10**9 if how == "none" else 1000):
        if step == int(at_step) and RANK == 1:
            if how == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            if how == "exit":
                sys.exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        out, _ = model(np.ones((2, 1, 3), np.float32))
        model.backward(np.ones_like(out))
        opt.step()
    report(finished=True)


def warmup():
    """LearningRateWarmupCallback's learning rates, batch by batch, and
    MetricAverageCallback's logs."""
    from lstmc.callbacks import Callback
    from lstmc.layers import Dense
    from lstmc.models import Sequential
    lrs = []

    class Record(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            lrs.append(self.model.optimizer.learning_rate)

    lstmc.manual_seed(0)
    model = Sequential([Dense(1)])
    model.build((None, 2))
    model.compile(lstmc.optimizers.SGD(learning_rate=0.4), "mse")
    x = np.arange(16, dtype=np.float32).reshape(8, 2) / 16 + RANK
    logs = {}

    class Keep(Callback):
        def on_epoch_end(self, epoch, l=None):
            logs.update(l)

    model.fit(x, x[:, :1], batch_size=4, epochs=3, verbose=0, callbacks=[
        dist.BroadcastGlobalVariablesCallback(0),
        dist.LearningRateWarmupCallback(0.4, warmup_epochs=2, steps_per_epoch=2),
        Record(), dist.MetricAverageCallback(), Keep()])
    report(lrs=lrs, logs=logs, hash=digest(model))


def horovod_keras():
    """Horovod's recipe on the Keras face: compile(DistributedOptimizer(Adam())), each rank
    fits its own shard (every SIZE-th sample, unshuffled) with the broadcast and
    metric-averaging callbacks, batches of 12 // SIZE; alone, plain fit on all the data in
    batches of 12: the same global batches. Saves and reloads the model."""
    from lstmc.layers import LSTM, Dense
    from lstmc.models import Sequential, load_model
    lstmc.manual_seed(RANK)          # different starts: the broadcast callback evens them
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 5, 3)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.float32)
    model = Sequential([LSTM(4, input_shape=(5, 3)), Dense(1, "sigmoid")])
    opt = lstmc.optimizers.Adam(learning_rate=0.01)
    model.compile(dist.DistributedOptimizer(opt) if SIZE > 1 else opt, "binary_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x[RANK::SIZE], y[RANK::SIZE], batch_size=12 // SIZE, epochs=2,
                        shuffle=False, verbose=0,
                        callbacks=[dist.BroadcastGlobalVariablesCallback(0),
                                   dist.MetricAverageCallback()])
    path = os.path.join(os.environ["LSTMC_RESULTS"], f"m{RANK}.lstmc")
    model.save(path)
    again = load_model(path)
    report(hash=digest(model), params=flat(model), history=history.history,
           reloaded=bool(np.array_equal(again.predict(x), model.predict(x))),
           optimizer=type(again.optimizer).__name__,
           refused=expect_error(model.fit, x, y, distributed=True))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
