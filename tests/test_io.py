"""lstmc.io: the save format.

* write/read and save/load round trips are bit-identical (every numeric and bool dtype, 0-d,
  empty and Fortran-ordered arrays, NaN payloads, nested structures with int keys, tuples,
  key order), also under hypothesis;
* a model's state_dict with an Adam state_dict restores bit-identical predictions and the
  same next training step;
* writes are atomic: a failure mid-write leaves the old file and no temporary file;
* every damaged file is a FormatError with a message that says what is wrong (truncation at
  every length, a flip in every byte, garbage, other zips, wrong kind, newer version, header
  and array disagreements) and nothing is ever unpickled.
"""
import decimal
import json
import math
import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lstmc
from lstmc import io, nn

DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
          np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128,
          np.dtype(">f4"), np.dtype(">i8")]


def assert_same(a, b, where="obj"):
    """Structural identity: the same types (int is not bool, tuple is not list), the same
    key order, arrays with the same dtype, shape and bytes, floats with the same bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape,
                                                           b.shape)
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        assert [type(k) for k in a] == [type(k) for k in b], where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or \
            (a == b and math.copysign(1, a) == math.copysign(1, b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_write_read_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for dt in DTYPES:
        raw = rng.integers(0, 256 if dt != np.bool_ else 2, size=48, dtype=np.uint8)
        arrays[f"{np.dtype(dt).str}/x"] = raw.view(np.dtype(dt))[:3].copy()  # any bits
    arrays["scalar"] = np.array(3.5)
    arrays["empty"] = np.zeros((0, 4), np.float32)
    arrays["fortran"] = np.asfortranarray(rng.standard_normal((3, 5)))
    arrays["view"] = rng.standard_normal((6, 6))[::2, 1::3]
    config = {"vocab": [1, 2, 3], "name": "x", "nested": {"a": None, "b": True}}
    io.write(tmp_path / "a.lstmc", "lstmc.test", config, arrays)
    got_config, got = io.read(tmp_path / "a.lstmc", kind="lstmc.test")
    assert got_config == config
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert_same(got[name], arr, name)
        assert got[name].flags.writeable
    assert got["fortran"].flags.f_contiguous


def test_nan_payloads_survive(tmp_path):
    bits = np.array([0x7FC00000, 0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0x80000000],
                    dtype=np.uint32)
    payloads = bits.view(np.float32)
    lstmc.save({"x": payloads}, str(tmp_path / "nan.lstmc"))
    back = lstmc.load(str(tmp_path / "nan.lstmc"))["x"]
    assert back.view(np.uint32).tolist() == bits.tolist()


def test_nested_structure_round_trip(tmp_path):
    obj = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
           3: {"1": "str key", 1: "int key", -7: [1, 2.5, None, True, False, "s"]},
           "tuple": (1, (2, [3, ()]), {}),
           "floats": [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324],
           "big": 2 ** 80,
           "np_scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.float16(0.1)],
           "text": "ünïcode \ud800 \n \"quoted\""}
    path = tmp_path / "tree.lstmc"
    lstmc.save(obj, path)
    assert_same(lstmc.load(path), obj)


def test_numpy_load_reads_the_arrays(tmp_path):
    """The archive is an .npz as far as numpy is concerned (allow_pickle=False)."""
    w = np.arange(12, dtype=np.int16).reshape(3, 4)
    io.write(tmp_path / "m.lstmc", "lstmc.test", {}, {"layer/w": w})
    with np.load(tmp_path / "m.lstmc", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["layer/w"], w)


def test_files_are_deterministic(tmp_path):
    obj = {"a": np.arange(5.0), "b": [1, "x"]}
    lstmc.save(obj, tmp_path / "1.lstmc")
    lstmc.save(obj, tmp_path / "2.lstmc")
    assert (tmp_path / "1.lstmc").read_bytes() == (tmp_path / "2.lstmc").read_bytes()


_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=5),
                    hnp.arrays(st.sampled_from(DTYPES),
                               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                max_side=3)))
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-5, 5)), children,
                        max_size=3)),
    max_leaves=12)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(obj=_trees)
def test_save_load_round_trip_hypothesis(tmp_path, obj):
    path = tmp_path / "h.lstmc"
    lstmc.save(obj, path)
    assert_same(lstmc.load(path), obj)


# ---- a model and its optimizer ----------------------------------------------------------
class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 5)
        self.lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
        self.fc = nn.Linear(7, 3)

    def forward(self, idx):
        out, _ = self.lstm(self.embedding(idx))
        return self.fc(out)

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.fc.backward(dlogits))
        return self.embedding.backward(dx)


def _train_step(model, opt, x, y):
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    return loss


@pytest.mark.parametrize("amsgrad", [False, True])
def test_checkpoint_restores_model_and_adam(tmp_path, amsgrad):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, size=(4, 6)), rng.integers(0, 3, size=(4, 6))
    lstmc.manual_seed(0)
    model = _Tagger()
    opt = lstmc.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99), amsgrad=amsgrad)
    for _ in range(3):
        _train_step(model, opt, x, y)
    path = tmp_path / "ckpt.lstmc"
    lstmc.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)

    lstmc.manual_seed(123)                 # different initial weights
    model2 = _Tagger()
    opt2 = lstmc.optim.Adam(model2.parameters(), lr=1.0)
    ckpt = lstmc.load(path)
    assert ckpt["epoch"] == 3
    assert_same(ckpt["optimizer"], opt.state_dict())
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.99) and opt2.param_groups[0]["lr"] == 1e-2

    model.eval(), model2.eval()
    assert_same(model2(x), model(x))
    model.train(), model2.train()
    assert _train_step(model2, opt2, x, y) == _train_step(model, opt, x, y)
    assert_same(model2.state_dict(), model.state_dict())
    assert_same(opt2.state_dict(), opt.state_dict())


# ---- atomic writes ------------------------------------------------------------------------
def _failing_write_array(monkeypatch, exc):
    real = np.lib.format.write_array
    calls = []

    def write_array(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:               # the second array: half of it, then the failure
            fp.write(b"\0" * 100)
            raise exc
        return real(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.lstmc"
    lstmc.save({"v": 1, "w": np.ones(3)}, path)
    old = path.read_bytes()
    _failing_write_array(monkeypatch, exc)
    with pytest.raises(type(exc)):
        lstmc.save({"a": np.zeros(1000), "b": np.zeros(1000)}, path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.lstmc"]
    monkeypatch.undo()
    assert lstmc.load(path)["v"] == 1


def test_failure_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.lstmc"
    lstmc.save([1], path)
    old = path.read_bytes()

    def no_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="Input/output"):
        lstmc.save([2], path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["model.lstmc"]


def test_bad_arguments_fail_before_touching_the_disk(tmp_path):
    path = tmp_path / "x.lstmc"
    with pytest.raises(TypeError, match=r"obj\['model'\]\['x'\] is a builtins.set"):
        lstmc.save({"model": {"w": np.zeros(2), "x": {1, 2}}}, path)
    with pytest.raises(TypeError, match=r"obj\[1\]\[0\] is an array of dtype object"):
        lstmc.save([0, [np.array([None])]], path)
    with pytest.raises(TypeError, match=r"obj has a key 1.5 of type float"):
        lstmc.save({1.5: 0}, path)
    with pytest.raises(TypeError, match=r"obj\['d'\] is a decimal.Decimal"):
        lstmc.save({"d": decimal.Decimal(1)}, path)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"obj\[0\] contains itself"):
        lstmc.save(loop, path)
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        io.write(path, "k", {"x": float("nan")}, {})
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        io.write(path, "k", {"x": object()}, {})
    with pytest.raises(TypeError, match=r"arrays\['s'\] has dtype <U1"):
        io.write(path, "k", {}, {"s": np.array(["a"])})
    with pytest.raises(ValueError, match=r"'\.\./up'"):
        io.write(path, "k", {}, {"../up": np.zeros(1)})
    with pytest.raises(TypeError, match="kind must be a non-empty str"):
        io.write(path, "", {}, {})
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        io.write(tmp_path / "no" / "dir.lstmc", "k", {}, {})


def test_the_same_object_twice_is_fine(tmp_path):
    a = np.arange(3)
    inner = [1, 2]
    lstmc.save({"x": a, "y": a, "p": inner, "q": inner}, tmp_path / "s.lstmc")
    back = lstmc.load(tmp_path / "s.lstmc")
    assert_same(back, {"x": a, "y": a, "p": inner, "q": inner})


# ---- damaged and foreign files ------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    obj = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "mask": np.array([True, False]),
           "n": 3}
    path = tmp_path / "ok.lstmc"
    lstmc.save(obj, path)
    return obj, path, path.read_bytes()


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        lstmc.load(tmp_path / "nothing.lstmc")


def test_truncated_at_every_length(saved, tmp_path):
    _, _, data = saved
    cut = tmp_path / "cut.lstmc"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(io.FormatError) as info:
            lstmc.load(cut)
        msg = str(info.value)
        assert ("truncated" in msg or "empty file" in msg) and str(cut) in msg, (n, msg)


def test_a_flip_in_any_byte_is_found_or_harmless(saved, tmp_path):
    """Every byte of a small file, flipped: the load either fails with FormatError or (for
    bytes nothing depends on, such as timestamps) returns exactly what was saved."""
    obj, _, data = saved
    bad = tmp_path / "bad.lstmc"
    harmless = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        bad.write_bytes(flipped)
        try:
            back = lstmc.load(bad)
        except io.FormatError:
            continue
        assert_same(back, obj)
        harmless += 1
    assert harmless < len(data) // 4


def test_flipped_payload_byte_names_the_member(saved, tmp_path):
    obj, _, data = saved
    at = data.index(obj["w"].tobytes()) + 17
    flipped = bytearray(data)
    flipped[at] ^= 0x01
    bad = tmp_path / "bad.lstmc"
    bad.write_bytes(flipped)
    with pytest.raises(io.FormatError, match=r"damaged member arr_0\.npy \(Bad CRC-32"):
        lstmc.load(bad)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file, not an lstmc file"),
    (b"hello, world\n" * 10, "not an lstmc file \\(it is not a zip archive\\)"),
    (bytes(range(256)), "not an lstmc file"),
    (pickle.dumps({"a": 1}), "not an lstmc file"),
])
def test_garbage_is_not_an_lstmc_file(tmp_path, content, message):
    path = tmp_path / "g.lstmc"
    path.write_bytes(content)
    with pytest.raises(io.FormatError, match=message):
        lstmc.load(path)


def test_an_npz_is_not_an_lstmc_file(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    with pytest.raises(io.FormatError, match="first member is not lstmc.json.*numpy.load"):
        lstmc.load(tmp_path / "a.npz")


def test_wrong_kind(tmp_path):
    io.write(tmp_path / "m.lstmc", "lstmc.demo.CharLM", {"vocab": []}, {})
    with pytest.raises(io.FormatError, match="file holds lstmc.demo.CharLM, expected "
                                             "lstmc.save"):
        lstmc.load(tmp_path / "m.lstmc")
    with pytest.raises(io.FormatError, match="holds lstmc.demo.CharLM, expected other"):
        io.read(tmp_path / "m.lstmc", kind="other")
    assert io.read(tmp_path / "m.lstmc")[0] == {"vocab": []}


def _rewrite(src, dst, edit_header=None, edit_members=None):
    """Copies an lstmc archive member by member, letting the test change the header dict
    or the {name: bytes} of the other members."""
    with zipfile.ZipFile(src) as z:
        header = json.loads(z.read("lstmc.json"))
        members = {n: z.read(n) for n in z.namelist() if n != "lstmc.json"}
    if edit_header:
        edit_header(header)
    if edit_members:
        edit_members(members)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("lstmc.json", json.dumps(header))
        for name, data in members.items():
            z.writestr(name, data)


def _npy(array, allow_pickle=False):
    import io as stdio
    buf = stdio.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _edit(key, value):
    def edit(header):
        if value is KeyError:
            del header[key]
        else:
            header[key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_edit("format_version", 2), "format version 2 by lstmc .*reads up to version 1: "
                                 "upgrade lstmc"),
    (_edit("magic", "other"), "lacks the magic 'lstmc'"),
    (_edit("format_version", KeyError), "format_version must be a positive int, got None"),
    (_edit("kind", KeyError), "header lacks the field 'kind'"),
    (_edit("config", KeyError), "header lacks the field 'config'"),
    (_edit("arrays", KeyError), "header lacks the field 'arrays'"),
    (_edit("config", [1]), "header field 'config' must be a dict, got list"),
    (lambda h: h["arrays"][0].update(shape=[4, 3]),
     r"array 'arr_0' holds <f4 \(3, 4\), the header says <f4 \(4, 3\)"),
    (lambda h: h["arrays"][0].update(dtype="<f8"),
     r"array 'arr_0' holds <f4 \(3, 4\), the header says <f8 \(3, 4\)"),
    (lambda h: h["arrays"].append({"name": "extra", "dtype": "<f4", "shape": []}),
     "array 'extra' listed in the header is missing"),
    (lambda h: h["arrays"][0].update(shape=[-1]), "malformed array entry"),
    (lambda h: h["config"].update(tree={"set": []}), r"malformed entry at obj: \{'set'"),
    (lambda h: h["config"]["tree"]["dict"][0].__setitem__(1, {"array": "nope"}),
     r"malformed entry at obj\['w'\]"),
])
def test_header_problems(saved, tmp_path, edit, message):
    _, path, _ = saved
    _rewrite(path, tmp_path / "e.lstmc", edit_header=edit)
    with pytest.raises(io.FormatError, match=message):
        lstmc.load(tmp_path / "e.lstmc")


def test_compressed_or_short_members_are_rejected(saved, tmp_path):
    obj, path, _ = saved

    def short(members):
        members["arr_0.npy"] = members["arr_0.npy"][:-4]

    _rewrite(path, tmp_path / "s.lstmc", edit_members=short)
    with pytest.raises(io.FormatError, match=r"array 'arr_0' has 44 payload bytes, <f4 "
                                             r"\(3, 4\) needs 48"):
        lstmc.load(tmp_path / "s.lstmc")
    with zipfile.ZipFile(tmp_path / "c.lstmc", "w", zipfile.ZIP_DEFLATED) as z, \
            zipfile.ZipFile(path) as src:
        for name in src.namelist():
            z.writestr(name, src.read(name))
    with pytest.raises(io.FormatError, match=r"damaged member lstmc.json \(compressed"):
        lstmc.load(tmp_path / "c.lstmc")


class _Exploit:
    def __reduce__(self):
        return exec, ("import os; os.environ['LSTMC_TEST_UNPICKLED'] = '1'",)


def test_never_unpickles(saved, tmp_path):
    _, path, _ = saved
    evil = np.empty(1, dtype=object)
    evil[0] = _Exploit()

    def put(members):
        members["arr_0.npy"] = _npy(evil, allow_pickle=True)

    def claim(header):
        header["arrays"][0].update(dtype="|O", shape=[1])

    for edit_header in (None, claim):
        _rewrite(path, tmp_path / "p.lstmc", edit_header=edit_header, edit_members=put)
        with pytest.raises(io.FormatError, match=r"array 'arr_0' holds \|O \(1,\)"):
            lstmc.load(tmp_path / "p.lstmc")
    assert "LSTMC_TEST_UNPICKLED" not in os.environ
