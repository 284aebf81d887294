"""Keras model files without Keras: `load(path)` reads a Keras 3 `.keras` archive
(config.json + model.weights.h5) or a legacy Keras 2 / tf.keras / Keras 3 `.h5` file
(model_config attribute + model_weights group) with h5py alone, and returns an
`lstmc.models.Sequential` of lstmc's own layers (a Sequential model or a Functional chain),
or an `lstmc.models.Model` (any other Functional graph of lstmc's layers).

The reader stays at the edge: it translates Keras' configuration into the arguments of
`lstmc.layers` and hands each layer its weights in Keras' layout (which the layers'
`set_weights` speak); what the layers compute is theirs. A configuration lstmc cannot run
exactly raises `UnsupportedModelError` naming the layer and the option — never a silent
approximation. A damaged or hostile file raises `lstmc.io.FormatError` naming the file and
what is wrong, before anything large is allocated: every weight's shape is checked against
the configuration and against the bytes the file really stores before it is read.

`dropout` and `recurrent_dropout` load as the layers' own (they act in training only).
Options that matter only to training and lstmc does not run (regularizers, constraints,
trainable=False) do not change a prediction, as in Keras' `predict`: the model loads, and
training it raises (see `Layer.train`).
"""
import io as bytes_io
import json
import math
import os
import re
import zipfile

import numpy as np

from lstmc import io
from lstmc.io import UnsupportedModelError
from lstmc.keras import layers as L

__all__ = ["load", "UnsupportedModelError"]

_MAX_CONFIG_BYTES = 64 << 20
# the largest expansion a compressed member or HDF5 dataset may claim (deflate's limit is
# about 1032:1): a larger claim is a decompression bomb, not a model
_MAX_EXPANSION = 1100
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"




def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading Keras .keras / .h5 files needs h5py: "
                          "pip install 'lstmc[keras]'") from e
    return h5py


def load(path):
    """The Keras model in `path` (.keras or .h5) as an uncompiled lstmc Sequential (or a
    functional Model for a graph that is not a chain)."""
    path = os.fspath(path)
    h5py = _h5py()
    with open(path, "rb") as f:
        magic = f.read(8)
    try:
        if magic.startswith(b"PK"):
            config, version, store = _open_keras_zip(path, h5py)
        elif magic == _HDF5_MAGIC:
            config, version, store = _open_legacy_h5(path, h5py)
        else:
            raise io.FormatError(f"{path}: neither a .keras archive nor an HDF5 file")
        with store:
            return _Builder(path, version, store).model(config)
    except (OSError, KeyError, TypeError, AttributeError, IndexError, ValueError,
            RuntimeError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, (FileNotFoundError, io.FormatError, UnsupportedModelError)):
            raise
        raise io.FormatError(f"{path}: not a readable Keras model file: "
                             f"{type(e).__name__}: {e}") from e


# ---- containers -------------------------------------------------------------------------
def _member(z, name, limit, path):
    """One zip member's bytes, refusing a size claim the archive cannot back."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise io.FormatError(f"{path}: the archive has no {name}") from None
    if info.file_size > limit or info.file_size > _MAX_EXPANSION * info.compress_size + 4096:
        raise io.FormatError(f"{path}: {name} claims {info.file_size} bytes from "
                             f"{info.compress_size} stored")
    return z.read(name)


def _open_keras_zip(path, h5py):
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        config = _json(_member(z, "config.json", _MAX_CONFIG_BYTES, path), path, "config.json")
        meta = {}
        if "metadata.json" in names:
            meta = _json(_member(z, "metadata.json", _MAX_CONFIG_BYTES, path), path,
                         "metadata.json")
        if "model.weights.h5" not in names:
            if "model.weights.npz" in names:
                # Keras' npz weights are pickled backend variables; lstmc never unpickles
                raise UnsupportedModelError(
                    f"{path}: model.weights.npz holds pickled Keras variables, which lstmc "
                    "does not unpickle; save with the default weights_format='h5'")
            raise io.FormatError(f"{path}: the archive has no model.weights.h5")
        size = os.path.getsize(path)
        data = _member(z, "model.weights.h5", _MAX_EXPANSION * size + 4096, path)
    h5 = h5py.File(bytes_io.BytesIO(data), "r")
    return config, _major(meta.get("keras_version", "3"), path), _Keras3Store(h5, path)


def _open_legacy_h5(path, h5py):
    h5 = h5py.File(path, "r")
    try:
        if "model_config" not in h5.attrs:
            raise io.FormatError(f"{path}: an HDF5 file without a model_config attribute "
                                 "(weights only?)")
        raw = h5.attrs["model_config"]
        raw = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise io.FormatError(f"{path}: model_config is {len(raw)} bytes")
        config = _json(raw, path, "model_config")
        version = _major(_text(h5.attrs.get("keras_version", "2")), path)
        if "model_weights" not in h5:
            raise io.FormatError(f"{path}: no model_weights group")
        return config, version, _LegacyStore(h5, path)
    except BaseException:
        h5.close()
        raise


def _json(raw, path, what):
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise io.FormatError(f"{path}: {what} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise io.FormatError(f"{path}: {what} is not a JSON object")
    return value


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _major(version, path):
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise io.FormatError(f"{path}: unreadable keras_version {version!r}") from None


# ---- weight stores: a layer's weights, in Keras' order ----------------------------------
class _Store:
    """An open weights file; `weights(slot, name, subpaths)` gives a layer's weights in
    Keras' order, found by its slot in a .keras file and by its name in a legacy one."""

    def __init__(self, h5, path):
        self.h5, self.path = h5, path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h5.close()

    def _dataset(self, ds, where):
        """A dataset's metadata, checked: floats, and as many bytes stored as declared."""
        h5py = _h5py()
        if not isinstance(ds, h5py.Dataset):
            raise io.FormatError(f"{self.path}: {where} is not a dataset")
        if ds.dtype.kind != "f":
            raise io.FormatError(f"{self.path}: {where} has dtype {ds.dtype}, expected "
                                 "floats")
        return _Weight(ds, where, self.path)


class _Weight:
    """One weight in the file: its shape now, its values once they are known to be sane."""

    def __init__(self, ds, where, path):
        self.ds, self.where, self.path = ds, where, path
        self.shape = tuple(int(d) for d in ds.shape)

    def read(self):
        ds = self.ds
        nbytes = math.prod(self.shape) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        limit = stored * (_MAX_EXPANSION if ds.compression else 1)
        if nbytes > limit:
            raise io.FormatError(f"{self.path}: {self.where} declares shape {self.shape} "
                                 f"({nbytes} bytes) but stores {stored} bytes")
        return np.asarray(ds[()])


class _Keras3Store(_Store):
    """model.weights.h5 of a .keras archive: layers/<slot>/.../vars/<i>, where a slot is
    the layer class in snake case, numbered from the second of a class on (lstm, lstm_1)."""

    def weights(self, slot, name, subpaths):
        base = f"layers/{slot}"
        if base not in self.h5:
            if not subpaths:
                return []
            raise io.FormatError(f"{self.path}: model.weights.h5 has no {base}")
        out, expected = [], set()
        for sub in subpaths:
            group = self.h5.get(f"{base}/{sub}")
            if group is None:
                raise io.FormatError(f"{self.path}: model.weights.h5 has no {base}/{sub}")
            keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
            if keys != [str(i) for i in range(len(keys))]:
                raise io.FormatError(f"{self.path}: {base}/{sub} holds {keys}, expected "
                                     "0, 1, ...")
            for k in keys:
                out.append(self._dataset(group[k], f"{base}/{sub}/{k}"))
                expected.add(f"{sub}/{k}")
        found = []
        self.h5[base].visititems(lambda name, obj: found.append(name)
                                 if isinstance(obj, _h5py().Dataset) else None)
        extra = sorted(set(found) - expected)
        if extra:
            raise UnsupportedModelError(f"{self.path}: {base} has weights lstmc does not "
                                        f"know: {extra}")
        return out


class _LegacyStore(_Store):
    """model_weights/<layer name>, its weight_names attribute giving the order."""

    def weights(self, slot, name, subpaths):
        mw = self.h5["model_weights"]
        if name not in mw:
            if not subpaths:
                return []
            raise io.FormatError(f"{self.path}: model_weights has no group {name!r}")
        group = mw[name]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        out = []
        for n in names:
            if n not in group:
                raise io.FormatError(f"{self.path}: model_weights/{name} lists {n!r} but "
                                     "has no such dataset")
            out.append(self._dataset(group[n], f"model_weights/{name}/{n}"))
        return out


# ---- configuration -> lstmc layers -------------------------------------------------------
# keys that do not change what a loaded layer computes
_INERT = {"name", "trainable", "dtype", "seed", "implementation", "unroll", "use_cudnn",
          "unit_forget_bias", "input_length", "build_config", "batch_input_shape",
          "batch_shape", "input_shape", "registered_name", "module", "optional",
          "lora_alpha"}
_TRAINING_ONLY = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
                  "activity_regularizer", "embeddings_regularizer", "kernel_constraint",
                  "recurrent_constraint", "bias_constraint", "embeddings_constraint",
                  "beta_regularizer", "gamma_regularizer", "beta_constraint",
                  "gamma_constraint")
# option -> the value lstmc runs (anything else is refused)
_FIXED = {"time_major": False, "sparse": False, "ragged": False, "lora_rank": None,
          "quantization_config": None, "noise_shape": None, "weights": None}
_ARGS = {
    "Dense": ("units", "activation", "use_bias"),
    "Embedding": ("input_dim", "output_dim", "mask_zero"),
    "Dropout": ("rate",),
    "LSTM": ("units", "activation", "recurrent_activation", "use_bias", "return_sequences",
             "return_state", "go_backwards", "stateful", "dropout", "recurrent_dropout"),
}
_ARGS["GRU"] = _ARGS["LSTM"] + ("reset_after",)
_ARGS["SimpleRNN"] = tuple(a for a in _ARGS["LSTM"] if a != "recurrent_activation")
_RECURRENT = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
# the layers of functional graphs
_ARGS.update({
    "Activation": ("activation",), "RepeatVector": ("n",), "Concatenate": ("axis",),
    "Add": (), "Multiply": (), "Dot": ("axes", "normalize"),
    "Attention": ("use_scale", "score_mode", "dropout"),
    "AdditiveAttention": ("use_scale", "dropout"),
    "LayerNormalization": ("axis", "epsilon", "center", "scale"),
})
# where each layer's weights sit in a .keras file, in Keras' order
_KERAS3_VARS = {"Dense": ["vars"], "Embedding": ["vars"], "Dropout": [], "InputLayer": [],
                "LSTM": ["cell/vars"], "GRU": ["cell/vars"], "SimpleRNN": ["cell/vars"],
                "Bidirectional": ["forward_layer/cell/vars", "backward_layer/cell/vars"]}
# a functional graph's layers: where their weights sit (when they have any)
_GRAPH_VARS = dict(_KERAS3_VARS, Activation=[], RepeatVector=[], Concatenate=[], Add=[],
                   Multiply=[], Dot=[], Attention=["vars"], AdditiveAttention=["vars"],
                   LayerNormalization=["vars"], TimeDistributed=["layer/vars"])
_HARD_SIGMOID = {2: "Keras 2: clip(0.2 x + 0.5, 0, 1)", 3: "Keras 3: relu6(x + 3) / 6"}


class _Builder:
    def __init__(self, path, version, store):
        self.path, self.version, self.store = path, version, store

    def fail(self, layer, message):
        raise UnsupportedModelError(f"{self.path}: layer {layer!r}: {message}")

    def model(self, config):
        kind, mc = config.get("class_name"), config.get("config")
        if not isinstance(mc, dict) or not isinstance(mc.get("layers"), list):
            raise io.FormatError(f"{self.path}: the model configuration has no layer list")
        if kind == "Sequential":
            specs = mc["layers"]
        elif kind in ("Functional", "Model"):
            if not self.is_chain(mc):
                return self.graph(mc)
            specs = self.chain(mc)
        else:
            raise UnsupportedModelError(f"{self.path}: a {kind!r} model; lstmc reads "
                                        "Sequential models and plain Functional chains")
        from lstmc.keras.models import Sequential
        model = Sequential(name=_text(mc.get("name") or "sequential"))
        shape, slots = None, {}
        for spec in specs:
            if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
                raise io.FormatError(f"{self.path}: a layer entry without a config")
            cls, cfg = spec.get("class_name"), spec["config"]
            name = _text(cfg.get("name", cls))
            if cls not in _KERAS3_VARS:
                self.fail(name, f"layer class {cls!r} is not one lstmc has "
                          f"({', '.join(sorted(_KERAS3_VARS))})")
            # Sequential's weights file leaves its input layer out of the numbering
            slot = None if (cls == "InputLayer" and kind == "Sequential") else \
                _slot(_snake(cls), slots)
            if cls == "InputLayer":
                shape = self.input_shape(cfg, name)
                continue
            if shape is None:
                shape = self.input_shape(cfg, name, optional=True)
            weights = self.store.weights(slot, name, _KERAS3_VARS[cls])
            if shape is None:
                shape = _first_shape(cls, weights)
            self.check_shapes(cls, cfg, shape, weights, name)
            arrays = [w.read() for w in weights]   # checked against the bytes stored
            layer, notes = self.layer(cls, cfg, name)
            try:
                if not model.layers:
                    model.add(L.Input(shape))
                layer.build(shape)
                layer.set_weights(arrays)
                model.add(layer)
            except ValueError as e:
                if isinstance(e, io.FormatError):
                    raise
                self.fail(name, str(e))
            if notes:
                layer.training_unsupported = "; ".join(notes)
            shape = layer.compute_output_shape(shape)
        if not model.layers:
            raise UnsupportedModelError(f"{self.path}: the model has no layers")
        return model

    def is_chain(self, mc):
        try:
            self.chain(mc)
        except UnsupportedModelError:
            return False
        return True

    # ---- functional graphs ----------------------------------------------------------------
    def graph(self, mc):
        """A Functional model's graph as an lstmc.models.Model: the layers its outputs need
        (Keras 3 also saves the ops that computed masks — NotEqual, LogicalOr, ... — wired
        through mask= arguments; lstmc's layers propagate masks themselves, by the same
        rules, so those arguments and the ops only they need are left out), called as the
        file's nodes say, then given their weights."""
        from lstmc.keras.models import Model
        specs, slots, by_name = mc["layers"], {}, {}
        for spec in specs:
            if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
                raise io.FormatError(f"{self.path}: a layer entry without a config")
            name = _text(spec.get("name") or spec["config"].get("name"))
            by_name[name] = (spec, _slot(_snake(spec.get("class_name")), slots))
        inputs = [_history(v, self.path) for v in _as_list(mc.get("input_layers"))]
        outputs = [_history(v, self.path) for v in _as_list(mc.get("output_layers"))]
        needed, stack = set(), [h[0] for h in outputs]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            if name not in by_name:
                raise io.FormatError(f"{self.path}: a node refers to no layer {name!r}")
            needed.add(name)
            for node in _nodes(by_name[name][0], self.path):
                stack += [h[0] for h in node.tensors()]
        layers = {}
        for name in [n for n in by_name if n in needed]:   # the file's order
            spec, _ = by_name[name]
            cls, cfg = spec.get("class_name"), spec["config"]
            if cls == "InputLayer":
                layers[name] = L.InputLayer(shape=self.input_shape(cfg, name),
                                            dtype=_policy(cfg.get("dtype")), name=name)
                continue
            if cls not in _GRAPH_VARS:
                self.fail(name, f"layer class {cls!r} is not one lstmc has "
                          f"({', '.join(sorted(_GRAPH_VARS))})")
            layers[name], notes = self.layer(cls, cfg, name)
            if notes:
                layers[name].training_unsupported = "; ".join(notes)
        made = {name: [[layer.output]] for name, layer in layers.items()
                if isinstance(layer, L.InputLayer)}
        pending = [(name, k, node) for name in layers if name not in made
                   for k, node in enumerate(_nodes(by_name[name][0], self.path))]
        while pending:
            ready = [p for p in pending if all(
                h[0] in made and len(made[h[0]]) > h[1] for h in p[2].tensors())
                and len(made.get(p[0], [])) == p[1]]
            if not ready:
                raise io.FormatError(f"{self.path}: the nodes of layers "
                                     f"{sorted({p[0] for p in pending})} cannot be ordered")
            for name, k, node in ready:
                out = node.call(layers[name], made, self)
                made.setdefault(name, []).append(out if isinstance(out, list) else [out])
                pending.remove((name, k, node))
        for name, layer in layers.items():
            if isinstance(layer, L.InputLayer):
                continue
            spec, slot = by_name[name]
            expected = [w.shape for w in layer.get_weights()]
            subpaths = _GRAPH_VARS[spec["class_name"]] if expected else []
            weights = self.store.weights(slot, name, subpaths)
            got = [w.shape for w in weights]
            if got != expected:
                raise io.FormatError(f"{self.path}: layer {name!r}: weights of shapes {got}, "
                                     f"its configuration needs {expected}")
            try:
                layer.set_weights([w.read() for w in weights])
            except ValueError as e:
                if isinstance(e, io.FormatError):
                    raise
                self.fail(name, str(e))
        def tensor(h):
            return made[h[0]][h[1]][h[2]]
        ins, outs = [tensor(h) for h in inputs], [tensor(h) for h in outputs]
        return Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0],
                     name=_text(mc.get("name") or "functional"))

    def chain(self, mc):
        """A Functional model's layers when they form one chain from its one input."""
        layers = mc["layers"]
        names = [_text(l.get("name") or l.get("config", {}).get("name")) for l in layers]
        for prev, layer, name in zip([None] + names, layers, names):
            sources = _inbound(layer.get("inbound_nodes"))
            want = [] if prev is None else [prev]
            if sources != want:
                raise UnsupportedModelError(
                    f"{self.path}: layer {name!r} takes {sources or 'no input'}, not the "
                    f"previous layer's output: lstmc reads Functional models that are one "
                    "chain (Input -> layers in sequence)")
        ends = [_endpoints(mc.get(k)) for k in ("input_layers", "output_layers")]
        if ends != [names[:1], names[-1:]]:
            raise UnsupportedModelError(f"{self.path}: inputs {ends[0]} and outputs "
                                        f"{ends[1]}: lstmc reads one-input, one-output "
                                        "chains")
        return layers

    def input_shape(self, cfg, name, optional=False):
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key) is not None:
                shape = cfg[key]
                if not isinstance(shape, list) or len(shape) < 2 or not all(
                        d is None or (isinstance(d, int) and 0 < d < 2 ** 31)
                        for d in shape):
                    raise io.FormatError(f"{self.path}: layer {name!r}: {key} {shape!r} "
                                         "is not a shape")
                return tuple(shape[1:])
        if not optional:
            raise io.FormatError(f"{self.path}: input layer {name!r} has no shape")
        return None

    def activation(self, value, layer, option):
        if isinstance(value, dict):        # {"class_name": "function", "config": "tanh"}
            value = value.get("config")
        if value == "hard_sigmoid":     # two functions under one name: say which one
            meaning = _HARD_SIGMOID[3 if self.version >= 3 else 2]
            self.fail(layer, f"{option}='hard_sigmoid' ({meaning}) is not one lstmc's "
                      "kernels run")
        return value

    def layer(self, cls, cfg, name, inner=False):
        """(an lstmc layer for cfg, its training-only options)."""
        notes = []
        dtype = _policy(cfg.get("dtype"))
        if dtype not in ("float32", "float64"):
            self.fail(name, f"dtype policy {dtype!r} (lstmc computes in float32 or float64)")
        if cfg.get("trainable") is False:
            notes.append("trainable=False")
        for key in _TRAINING_ONLY:
            if cfg.get(key) is not None:
                notes.append(f"{key}={cfg[key]!r}")
        for key, value in _FIXED.items():
            if key in cfg and cfg[key] != value:
                self.fail(name, f"{key}={cfg[key]!r} is not supported (lstmc runs {value!r})")
        if cls == "Bidirectional":
            return self.bidirectional(cfg, name, dtype, notes)
        if cls == "TimeDistributed":
            return self.time_distributed(cfg, name, dtype, notes)
        if cls == "LayerNormalization" and cfg.get("rms_scaling"):
            self.fail(name, "rms_scaling=True is not supported")
        args = _ARGS[cls]
        kw = {k: cfg[k] for k in args if k in cfg}
        for key in ("activation", "recurrent_activation"):
            if key in kw:
                kw[key] = self.activation(kw[key], name, key)
        if cls in _RECURRENT:
            if cfg.get("zero_output_for_mask") and cfg.get("return_sequences") and not inner:
                self.fail(name, "zero_output_for_mask=True outside Bidirectional")
        known = set(args) | _INERT | set(_TRAINING_ONLY) | set(_FIXED) | {
            "recurrent_dropout", "zero_output_for_mask", "kernel_initializer",
            "recurrent_initializer", "bias_initializer", "embeddings_initializer",
            "beta_initializer", "gamma_initializer", "rms_scaling"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            self.fail(name, f"{cls} options lstmc does not know: {unknown}")
        try:
            layer = getattr(L, cls)(name=name, dtype=dtype, **kw)
        except (TypeError, ValueError) as e:
            self.fail(name, str(e))
        return layer, notes

    def time_distributed(self, cfg, name, dtype, notes):
        unknown = sorted(set(cfg) - _INERT - set(_FIXED) - {"layer"})
        if unknown:
            self.fail(name, f"TimeDistributed options lstmc does not know: {unknown}")
        spec = cfg.get("layer")
        if not isinstance(spec, dict) or spec.get("class_name") not in ("Dense", "Dropout",
                                                                        "Activation"):
            got = spec.get("class_name") if isinstance(spec, dict) else spec
            self.fail(name, "TimeDistributed must wrap a Dense, Dropout or Activation layer "
                      f"in lstmc, got {got!r}")
        inner_cfg = spec.get("config")
        if not isinstance(inner_cfg, dict):
            raise io.FormatError(f"{self.path}: layer {name!r}: wrapped layer has no config")
        inner, inner_notes = self.layer(spec["class_name"], inner_cfg,
                                        _text(inner_cfg.get("name", name)), inner=True)
        try:
            layer = L.TimeDistributed(inner, name=name, dtype=dtype)
        except (TypeError, ValueError) as e:
            self.fail(name, str(e))
        return layer, notes + inner_notes

    def bidirectional(self, cfg, name, dtype, notes):
        unknown = sorted(set(cfg) - _INERT - set(_FIXED) - set(_TRAINING_ONLY)
                         - {"layer", "backward_layer", "merge_mode"})
        if unknown:
            self.fail(name, f"Bidirectional options lstmc does not know: {unknown}")
        spec = cfg.get("layer")
        if not isinstance(spec, dict) or spec.get("class_name") not in _RECURRENT:
            self.fail(name, "Bidirectional must wrap an LSTM, GRU or SimpleRNN, got "
                      f"{spec.get('class_name') if isinstance(spec, dict) else spec!r}")
        forward = spec.get("config")
        if not isinstance(forward, dict):
            raise io.FormatError(f"{self.path}: layer {name!r}: wrapped layer has no config")
        back = cfg.get("backward_layer")
        if back is not None:
            # Keras 3 always writes the backward layer; lstmc runs `layer` reversed, so it
            # must be that configuration with go_backwards flipped
            bc = back.get("config", {}) if isinstance(back, dict) else {}
            args = [a for a in _ARGS[spec["class_name"]] if a != "go_backwards"]
            same = lambda c: [c.get(a) for a in args]
            if back.get("class_name") != spec["class_name"] or same(bc) != same(forward) \
                    or bool(bc.get("go_backwards")) == bool(forward.get("go_backwards")):
                self.fail(name, "backward_layer is not layer's configuration reversed")
        if cfg.get("merge_mode", "concat") is None:
            self.fail(name, "merge_mode=None (two outputs) is not supported")
        inner, inner_notes = self.layer(spec["class_name"], forward,
                                        _text(forward.get("name", name)), inner=True)
        try:
            layer = L.Bidirectional(inner, merge_mode=cfg.get("merge_mode", "concat"),
                                    name=name, dtype=dtype)
        except (TypeError, ValueError) as e:
            self.fail(name, str(e))
        return layer, notes + inner_notes

    def check_shapes(self, cls, cfg, shape, weights, name):
        """The weights' shapes against the configuration, before anything is allocated."""
        expected = _keras_shapes(cls, cfg, shape)
        got = [w.shape for w in weights]
        if got != expected:
            raise io.FormatError(f"{self.path}: layer {name!r}: weights of shapes {got}, "
                                 f"its configuration needs {expected}")


def _keras_shapes(cls, cfg, shape):
    """Keras' weight shapes for a layer of cfg on inputs of `shape` (no batch axis)."""
    if cls == "Bidirectional":
        inner = _keras_shapes(cfg["layer"]["class_name"], cfg["layer"]["config"], shape)
        return inner + inner
    F = shape[-1] if shape else None
    if cls == "Dense":
        return [(F, cfg["units"])] + ([(cfg["units"],)] if cfg.get("use_bias", True) else [])
    if cls == "Embedding":
        return [(cfg["input_dim"], cfg["output_dim"])]
    if cls in _RECURRENT:
        GU, U = _RECURRENT[cls] * cfg["units"], cfg["units"]
        two = cls == "GRU" and cfg.get("reset_after", True)
        bias = [(2, GU) if two else (GU,)] if cfg.get("use_bias", True) else []
        return [(F, GU), (U, GU)] + bias
    return []


def _first_shape(cls, weights):
    """An input shape (no batch axis) for a first layer the file gives none for."""
    if cls == "Embedding":
        return (None,)
    F = weights[0].shape[0] if weights and weights[0].shape else None
    if cls in _RECURRENT or cls == "Bidirectional":
        return (None, F)
    return (F,)


def _policy(dtype):
    if dtype is None:
        return "float32"
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    return dtype


def _snake(cls):
    """Keras' to_snake_case: LSTM -> lstm, SimpleRNN -> simple_rnn, InputLayer -> input_layer."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", cls)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _slot(base, used):
    if base in used:
        used[base] += 1
        return f"{base}_{used[base]}"
    used[base] = 0
    return base


def _inbound(nodes):
    """The names of the layers feeding a Functional layer (Keras 3 or Keras 2 nodes)."""
    if not nodes:
        return []
    if not isinstance(nodes, list) or len(nodes) != 1:
        return [f"{len(nodes)} calls"]
    node = nodes[0]
    if isinstance(node, dict):                         # Keras 3
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        extra = sorted(k for k, v in kwargs.items() if k != "training" and v is not None)
        if extra:
            return [f"arguments {extra}"]
        return [_text(a["config"]["keras_history"][0]) for a in args
                if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"] + \
            [f"argument {a!r}" for a in args
             if not (isinstance(a, dict) and a.get("class_name") == "__keras_tensor__")]
    return [_text(entry[0]) for entry in node]        # Keras 2: [[name, node, tensor, kw]]


def _endpoints(value):
    if value and not isinstance(value[0], list):
        value = [value]
    return [_text(v[0]) for v in value or []]


# ---- the nodes of a functional graph -------------------------------------------------------
def _as_list(value):
    if value and not isinstance(value[0], list):
        value = [value]
    return value or []


def _history(value, path):
    """[layer name, node index, tensor index] of an input / output entry or keras tensor."""
    if isinstance(value, dict):
        value = (value.get("config") or {}).get("keras_history")
    if not isinstance(value, list) or len(value) < 3:
        raise io.FormatError(f"{path}: {value!r} is not a tensor reference")
    name, node, index = value[:3]
    if not isinstance(node, int) or not isinstance(index, int) or node < 0 or index < 0:
        raise io.FormatError(f"{path}: {value!r} is not a tensor reference")
    return _text(name), node, index


def _is_tensor(value):
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


class _Node:
    """One call of a layer in a file: its tensor argument (one or a list), initial_state
    and the call options lstmc honours; mask= (Keras' own mask ops) is left out."""

    _OPTIONS = ("return_attention_scores", "use_causal_mask")

    def __init__(self, args, kwargs, layer, path):
        self.layer, self.path = layer, path
        if not args or len(args) != 1:
            raise UnsupportedModelError(f"{path}: layer {layer!r} is called with "
                                        f"{len(args or [])} positional arguments")
        first = args[0]
        self.listed = isinstance(first, list)
        values = first if self.listed else [first]
        if not all(_is_tensor(v) for v in values):
            raise UnsupportedModelError(f"{path}: layer {layer!r} is called on a value that "
                                        "is not a tensor")
        self.inputs = [_history(v, path) for v in values]
        kwargs = dict(kwargs or {})
        kwargs.pop("mask", None)
        kwargs.pop("training", None)
        states = kwargs.pop("initial_state", None)
        self.states = [] if states is None else [_history(v, path) for v in
                                                  (states if isinstance(states, list)
                                                   else [states])]
        self.options = {k: kwargs.pop(k) for k in self._OPTIONS if kwargs.get(k)}
        extra = sorted(k for k, v in kwargs.items() if v not in (None, False))
        if extra:
            raise UnsupportedModelError(f"{path}: layer {layer!r} is called with "
                                        f"arguments lstmc does not take: {extra}")

    def tensors(self):
        return self.inputs + self.states

    def call(self, layer, made, builder):
        get = lambda h: made[h[0]][h[1]][h[2]]
        x = [get(h) for h in self.inputs] if self.listed else get(self.inputs[0])
        kwargs = dict(self.options)
        if self.states:
            kwargs["initial_state"] = [get(h) for h in self.states]
        try:
            return layer(x, **kwargs)
        except (TypeError, ValueError) as e:
            if isinstance(e, io.FormatError):
                raise
            builder.fail(self.layer, str(e))


def _nodes(spec, path):
    """A layer entry's calls as _Node (Keras 3 dicts or Keras 2 lists)."""
    name = _text(spec.get("name") or spec.get("config", {}).get("name"))
    out = []
    for node in spec.get("inbound_nodes") or []:
        if isinstance(node, dict):                                   # Keras 3
            out.append(_Node(node.get("args"), node.get("kwargs"), name, path))
        elif isinstance(node, list):                                 # Keras 2
            tensors = [{"class_name": "__keras_tensor__",
                        "config": {"keras_history": list(e[:3])}} for e in node]
            kwargs = node[0][3] if node and len(node[0]) > 3 and \
                isinstance(node[0][3], dict) else {}
            out.append(_Node([tensors if len(tensors) > 1 else tensors[0]], kwargs, name,
                             path))
        else:
            raise io.FormatError(f"{path}: layer {name!r} has a node {node!r}")
    return out
