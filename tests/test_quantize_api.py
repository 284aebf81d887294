"""lstmc.quantize(model, "int8" | "bf16") on the PyTorch face: the copy runs forward, step
and the cells on int8 or bfloat16 weights (the quantized model of lstmc.reference), leaves
the float model as it was, survives copies, and refuses training, unbounded initial states
(int8) and the layers its kernels cannot run."""
import copy
import pickle
import threading

import numpy as np
import pytest

import lstmc
from lstmc import nn
from lstmc import reference as R

FORWARD = {nn.LSTM: R.lstm_forward, nn.GRU: R.gru_forward, nn.RNN: R.rnn_forward}


def _reference(m, x, hx=None, lengths=None, dtype="int8"):
    params = R.quantized_params({k: np.asarray(v, np.float64)
                                 for k, v in m.state_dict().items()}, dtype)
    kw = {"nonlinearity": m.nonlinearity} if type(m) is nn.RNN else {}
    return FORWARD[type(m)](x.astype(np.float64), params, num_layers=m.num_layers,
                            bidirectional=m.bidirectional, hx=hx, lengths=lengths,
                            quantize=R.activation_quantizer(dtype, True), **kw)


def _close(got, want):
    """float32 rounding of the float64 reference, but for rare flips of rint(127 h) or of
    bfloat16 rounding"""
    err = np.abs(np.asarray(got) - want)
    assert np.median(err) < 1e-6 and err.max() < 5e-3


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_quantized_module_computes_the_reference_quantized_model(cls, dtype):
    lstmc.manual_seed(0)
    m = cls(12, 40, num_layers=2, bidirectional=True, batch_first=True).eval()
    before = {k: np.array(v) for k, v in m.state_dict().items()}
    q = lstmc.quantize(m, dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 12)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    out, state = q(x, lengths=lengths)
    want = _reference(m, x.transpose(1, 0, 2), lengths=lengths, dtype=dtype)
    _close(out.transpose(1, 0, 2), want[0])
    _close(state[0] if cls is nn.LSTM else state, want[1][0] if cls is nn.LSTM else want[1])
    # the float model is as it was, and trains
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), before[k])
    assert np.abs(np.asarray(m(x, lengths=lengths)[0]) - out).max() < 0.05
    m.train()


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_step_and_cells_run_quantized_too(dtype):
    lstmc.manual_seed(1)
    m = nn.GRU(8, 24, num_layers=2).eval()
    q = lstmc.quantize(m, dtype)
    x = np.random.default_rng(1).standard_normal((7, 2, 8)).astype(np.float32)
    y, _ = q(x)
    state = q.initial_state(2)
    for t in range(7):
        y_t, state = q.step(x[t], state)
    np.testing.assert_array_equal(y_t, y[-1])
    cell = nn.LSTMCell(8, 16)
    qc = lstmc.quantize(cell, dtype)
    h, c = qc(x[0])
    want = _reference(cell._seq, x[:1], dtype=dtype)
    _close(h, want[0][0])


def test_bf16_takes_rnn_relu_and_any_initial_state():
    """bfloat16 keeps no static h scale: RNN-ReLU and initial states past [-1, 1] run"""
    lstmc.manual_seed(2)
    m = nn.RNN(6, 20, nonlinearity="relu").eval()
    q = lstmc.quantize(m, "bf16")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 6)).astype(np.float32)
    h0 = rng.uniform(-3, 3, (1, 3, 20)).astype(np.float32)
    out, hn = q(x, h0)
    want = _reference(m, x, h0, dtype="bf16")
    _close(out, want[0])
    _close(hn, want[1])
    assert q._engine.quant.dtype == "bf16"


def test_containers_copies_and_threads():
    lstmc.manual_seed(2)
    model = nn.Sequential(nn.Embedding(50, 16), nn.LSTM(16, 32, batch_first=True))
    q = lstmc.quantize(model)
    ids = np.random.default_rng(2).integers(0, 50, (4, 9))
    out = q(ids)[0]
    assert np.abs(out - model.eval()(ids)[0]).max() < 0.05
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        np.testing.assert_array_equal(other(ids)[0], out)
        with pytest.raises(RuntimeError, match="quantized"):
            other.train()
    results = [None] * 6

    def call(k):
        results[k] = q(ids)[0]
    threads = [threading.Thread(target=call, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, out)


def test_refusals_name_what_is_wrong():
    q = lstmc.quantize(nn.LSTM(4, 8))
    with pytest.raises(RuntimeError, match="quantized"):
        q.train()
    with pytest.raises(RuntimeError):
        q.backward(np.zeros((2, 1, 8), np.float32))
    x = np.zeros((2, 1, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        q(x, (np.full((1, 1, 8), 1.5, np.float32), None))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        q(x, (np.full((1, 1, 8), np.nan, np.float32), None))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        q.initial_state(1, h0=np.full((1, 1, 8), -2, np.float32))
    q(x, (np.full((1, 1, 8), -1, np.float32), np.full((1, 1, 8), 5, np.float32)))  # c: any
    with pytest.raises(ValueError, match="already"):
        lstmc.quantize(q)
    # its float parameters cannot change under the int8 copy (which would go stale)
    for module in (q, copy.deepcopy(q)):
        with pytest.raises(RuntimeError, match="quantized"):
            module.load_state_dict(nn.LSTM(4, 8).state_dict())
        with pytest.raises(RuntimeError, match="quantized"):
            lstmc.optim.SGD(module.parameters(), lr=0.1).step()
        with pytest.raises(ValueError, match="read-only"):
            module.weight_hh_l0.data[0, 0] = 1.0
    for bad, match in ((nn.GRU(4, 8, reset_after=False), "reset_after"),
                       (nn.LSTM(4, 8, cell_clip=3.0), "default cells"),
                       (nn.LSTM(4, 8, dtype=np.float64), "float32")):
        with pytest.raises(ValueError, match=match):
            lstmc.quantize(bad)
    with pytest.raises(TypeError, match="Module"):
        lstmc.quantize(object())
    with pytest.raises(ValueError, match="dtype"):
        lstmc.quantize(nn.LSTM(4, 8), dtype="int4")
    with pytest.raises(ValueError, match="reset_after"):
        lstmc.quantize(nn.GRU(4, 8, reset_after=False), "bf16")
    with pytest.raises(ValueError, match="already"):
        lstmc.quantize(lstmc.quantize(nn.GRU(4, 8), "bf16"), "int8")
    with pytest.raises(RuntimeError, match=r"quantized \(bf16\)"):
        lstmc.quantize(nn.GRU(4, 8), "bf16").train()


def test_info_names_the_quantized_kernels(capsys):
    from lstmc import _core
    from lstmc.__main__ import info

    info()
    out = capsys.readouterr().out.splitlines()
    for dtype, kernel_for, names in (("int8", _core.q8_kernel_for, _core.Q8_KERNELS),
                                     ("bf16", _core.bf16_kernel_for, _core.BF16_KERNELS)):
        line = [ln for ln in out if ln.startswith(dtype + " kernel")]
        assert len(line) == 1 and line[0].split()[2] == kernel_for()
        assert kernel_for() in names[1:]
