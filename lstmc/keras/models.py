"""Keras-flavoured models: `Sequential` (add, compile, fit, evaluate, predict, summary,
save) and `load_model`, on the `lstmc.layers` adapters and lstmc's engine.

    from lstmc.models import Sequential
    from lstmc.layers import LSTM, Dense
    model = Sequential()
    model.add(LSTM(units=50, input_shape=(10, 1)))
    model.add(Dense(units=1, activation='sigmoid'))
    model.compile(optimizer='adam', loss='binary_crossentropy', metrics=['accuracy'])
    model.fit(x_train, y_train, epochs=10, batch_size=32)

Training runs each batch through the layers' forward, the loss, the layers' backward (in
reverse) and one optimizer step; the loss takes the last layer's pre-activation when it is
the loss' own link (sigmoid + binary, softmax + categorical cross-entropy).
"""
import os

import numpy as np

from lstmc import io
from lstmc.keras import callbacks as callbacks_module, layers as layers_module
from lstmc.keras import losses as losses_module, optimizers as optimizers_module
from lstmc.keras import graph
from lstmc._random import generator
from lstmc.nn.module import Module, to_numpy

__all__ = ["Sequential", "Model", "load_model"]

_KIND = "lstmc.models.Sequential"
_MODEL_KIND = "lstmc.models.Model"


class _Trainer(Module):
    """What Sequential and the functional Model share: the training loop (fit, evaluate,
    train_on_batch) and the optimizer's binding. A subclass gives `compile`,
    `_train_figures(x, y, dp, n)` (one optimizer step on a batch -> its _Totals),
    `_eval_figures(x, y)`, `_figure_names()` (the logs' names, in order), `_loss_names()`
    (those that are losses) and, if its data is not one array each, `_check_data` (the
    loop slices lists and dicts of arrays itself: `_take`)."""

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.optimizer = self.loss = None
        self._metric_names = []
        self.compiled = False
        self.stop_training = False

    @property
    def layers(self):
        return list(self._layers)

    @property
    def quantized(self):
        """The dtype name of the layers' quantized weights ("int8" or "bf16";
        lstmc.quantize), or None for a float model."""
        from lstmc._quantize import quantized_dtype   # lstmc._quantize imports lstmc.nn
        return quantized_dtype(self)

    def get_layer(self, name=None, index=None):
        """The layer called `name` (or at position `index` of `layers`)."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; the model's are "
                         f"{[l.name for l in self.layers]}")

    def _check_data(self, x, y):
        """(x, y) as the loop slices them, and the number of samples."""
        x, y = _array(x, "x"), _array(y, "y")
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same number of samples, got {len(x)} "
                             f"and {len(y)}")
        return x, y, len(x)

    # ---- training (shared) ----------------------------------------------------------------
    def _trainable(self):
        return [p for _, p in self.named_parameters()]

    def _ensure_optimizer(self):
        """Binds the optimizer to the parameters, once every layer is built (layers without
        an input shape build on the first batch)."""
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before fit / evaluate")
        if not self.built:
            raise RuntimeError("the model is not built yet: run a batch through it first")
        if not self.optimizer.built:
            self.optimizer.build(self._trainable())

    def train_on_batch(self, x, y):
        """One optimizer step on one batch; returns its loss, or [loss, metrics...] (the
        figures before the step, as Keras)."""
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before fit / evaluate")
        x, y, _ = self._check_data(x, y)
        figures = list(self._train_figures(x, y).logs().values())
        return figures[0] if len(figures) == 1 else figures

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            distributed=False):
        """Trains for `epochs` passes over (x, y); returns a History (`.history` holds loss,
        metrics and val_... per epoch). validation_split takes the last fraction of the
        samples (before shuffling), as Keras; validation_data is (x_val, y_val).

        distributed=True trains data-parallel over the ranks of an MPI job (run under
        `mpiexec -n N`; lstmc.distributed): every rank passes the same x and y, batch_size
        is the global batch, and each rank trains on its share of every batch (rank 0's
        shuffled order). Rank 0's weights and optimizer state are sent to the others first;
        the gradients are summed over the ranks before each step; the loss, metrics and
        validation figures are the whole batch's and epoch's on every rank (the validation
        data shared out too). Only rank 0 shows the progress bar and runs ModelCheckpoint.
        With one thread per rank and no dropout, the weights equal one process's on the
        whole batch to float32 rounding (build the model before fit for the same initial
        weights: an unbuilt one is built before the first epoch's order is drawn)."""
        x, y, n = self._check_data(x, y)
        if validation_data is None and validation_split:
            if not 0 < validation_split < 1:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
            n_train = int(n * (1 - validation_split))
            validation_data = (_take(x, slice(n_train, None)), _take(y, slice(n_train, None)))
            x, y = _take(x, slice(0, n_train)), _take(y, slice(0, n_train))
            n = n_train
        if n == 0:
            raise ValueError("fit needs at least one training sample")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val) (sample "
                                 "weights are not supported)")
        bs = _batch_size(batch_size)
        steps = -(-n // bs)
        verbose = 1 if verbose == "auto" else int(verbose)
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before fit / evaluate")
        dp = None
        if distributed:
            from lstmc.distributed.training import DataParallel
            dp = DataParallel(self, x, n)
        history = callbacks_module.History()
        cbs = list(callbacks or [])
        if dp is not None and dp.rank != 0:   # files and the progress bar: rank 0's
            cbs = [c for c in cbs if not isinstance(c, callbacks_module.ModelCheckpoint)]
            verbose = 0
        if verbose:
            cbs.append(callbacks_module.ProgressBar(steps, epochs, verbose))
        cbs.append(history)   # last, as Keras: it records the logs the callbacks left
        cb = callbacks_module.CallbackList(cbs, self)
        self.train()   # a layer that cannot train (quantized, ...) says so before any callback
        self.stop_training = False
        if dp is not None:
            dp.start()
        cb.on_train_begin()
        names = self._figure_names()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            order = generator().permutation(n) if shuffle and (dp is None or dp.rank == 0) \
                else np.arange(n)
            if dp is not None and shuffle:
                order = dp.order(order)
            totals = _Totals()
            for step in range(steps):
                idx = order[step * bs:(step + 1) * bs]
                mine = idx if dp is None else dp.share(idx)
                cb.on_train_batch_begin(step)
                figures = self._train_figures(_take(x, mine), _take(y, mine), dp, len(idx))
                if dp is not None:    # the whole batch's: the ranks' shares summed
                    figures = dp.sum_totals(figures, names)
                    for name in self._loss_names():
                        figures.counts[name] = len(idx)
                totals.merge(figures)
                cb.on_train_batch_end(step, totals.logs())
                if self.stop_training:   # as Keras: a callback stops within the epoch
                    break
            logs = totals.logs()
            if validation_data is not None:
                val = self._evaluate_totals(*validation_data, bs, dp).logs()
                logs.update({"val_" + k: v for k, v in val.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        history.params = {"epochs": epochs, "steps": steps, "verbose": verbose}
        history.model = self
        return history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """Mean loss (and metrics) over (x, y) in inference mode: a float, a list [loss,
        metrics...], or a dict with return_dict."""
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before evaluate")
        logs = self._evaluate_totals(x, y, _batch_size(batch_size)).logs()
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    def _evaluate_totals(self, x, y, bs, dp=None):
        """The sums and counts of the loss and metrics over (x, y); with `dp` each rank
        evaluates its contiguous share and the totals are summed over the ranks."""
        x, y, n = self._check_data(x, y)
        if n == 0:
            raise ValueError("evaluate needs at least one sample")
        if dp is not None:
            mine = dp.share(np.arange(n))
            x, y, n = _take(x, mine), _take(y, mine), len(mine)
        totals = _Totals()
        for i in range(0, n, bs):
            totals.merge(self._eval_figures(_take(x, slice(i, i + bs)),
                                            _take(y, slice(i, i + bs))))
        if dp is not None:
            totals = dp.sum_totals(totals, self._figure_names())
        return totals

    def reset_states(self):
        for layer in self._layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()

    # ---- weights ----------------------------------------------------------------------------
    def get_weights(self):
        """Every layer's weights in Keras' layout, layers in Keras' order (model.layers:
        a Sequential's in order, a functional Model's as Keras orders a graph)."""
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights):
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self._layers)
        if expected != len(weights):
            raise ValueError(f"set_weights expects {expected} arrays, got {len(weights)}")
        at = 0
        for layer in self._layers:
            n = len(layer.get_weights())
            if n:                             # an unbuilt layer has none yet
                layer.set_weights(weights[at:at + n])
            at += n

    def count_params(self):
        return sum(layer.count_params() for layer in self._layers)

    def save_weights(self, filepath):
        weights = self.get_weights()
        io.write(filepath, self._file_kind + ".weights", {"count": len(weights)},
                 _weight_arrays(weights))

    def load_weights(self, filepath):
        _, arrays = io.read(filepath, kind=self._file_kind + ".weights")
        self.set_weights(_weights_of(arrays))


class Sequential(_Trainer):
    """A stack of layers, each feeding the next (the first may be an `Input`)."""

    _file_kind = _KIND   # the kind of its files

    def __init__(self, layers=None, name=None):
        super().__init__(name or layers_module._auto_name("Sequential"))
        self._layers = []
        self._input_shape = None
        for layer in layers or []:
            self.add(layer)

    # ---- building -----------------------------------------------------------------------
    def add(self, layer):
        if isinstance(layer, graph.KerasTensor) and layer.node.is_input:
            layer = layer.node.layer
        if isinstance(layer, layers_module.InputLayer):
            if self._layers:
                raise ValueError("Input must come first in a Sequential model")
            self._input_shape = layer.shape
            return
        if not isinstance(layer, layers_module.Layer):
            raise TypeError(f"Sequential.add takes an lstmc.layers layer, got "
                            f"{type(layer).__name__}")
        if self._layers and getattr(self._layers[-1], "return_state", False):
            raise ValueError(f"{self._layers[-1].name} returns its states: in Sequential "
                             "only the last layer may (use return_state=False)")
        if any(layer.name == l.name for l in self._layers):
            raise ValueError(f"a layer named {layer.name!r} is already in the model")
        if not self._layers and self._input_shape is None and layer.input_shape is not None:
            self._input_shape = layer.input_shape
        self._layers.append(layer)
        self._modules[layer.name] = layer    # a child (parameters, train/eval), not an attribute
        if self._input_shape is not None:
            self.build((None,) + tuple(self._input_shape))

    def build(self, input_shape=None):
        """Builds every layer for inputs of `input_shape` (with the batch axis, as Keras)."""
        if input_shape is not None:
            self._input_shape = tuple(input_shape)[1:]
        shape = self._input_shape
        if shape is None:
            return
        for layer in self._layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    @property
    def built(self):
        return bool(self._layers) and all(l.built for l in self._layers)

    def _output_shapes(self):
        shape, out = self._input_shape, []
        for layer in self._layers:
            shape = None if shape is None else layer.compute_output_shape(shape)
            out.append(shape)
        return out

    # ---- running ------------------------------------------------------------------------
    def _forward(self, x, training, logits=False):
        """Runs the layers; with logits, the last one stops before its activation."""
        if not self._layers:
            raise RuntimeError("the model has no layers")
        self.train(training)
        if self._input_shape is None:         # built from the first batch
            self._input_shape = tuple(np.shape(x)[1:])
        mask = None
        last = len(self._layers) - 1
        for i, layer in enumerate(self._layers):
            if i == last and logits:
                x = layer.logits(x, training)
            else:
                x, mask = layer.forward(x, mask, training)
        return x, mask

    def _backward(self, dy, logits):
        last = len(self._layers) - 1
        for i in range(last, -1, -1):
            layer = self._layers[i]
            dy = layer.backward(dy, from_logits=True) if (i == last and logits) \
                else layer.backward(dy)
            if dy is None:
                break

    def __call__(self, x, training=False):
        return self._forward(x, training)[0]

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for `x`, batch by batch (default 32), in inference mode."""
        x = _array(x, "x")
        bs = _batch_size(batch_size)
        outs = [self._forward(x[i:i + bs], False)[0] for i in range(0, len(x), bs)]
        if not outs:
            raise ValueError("predict needs at least one sample")
        if isinstance(outs[0], list):     # a last layer with return_state: one array each
            return tuple(np.concatenate(parts) for parts in zip(*outs))
        return np.concatenate(outs)

    # ---- training -----------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """optimizer: 'adam' / 'sgd' / 'rmsprop' or an lstmc.optimizers instance; loss: a
        Keras loss name or an lstmc.losses.Loss; metrics: names ('accuracy', 'mae', ...)."""
        if loss is None:
            raise ValueError("compile needs a loss")
        self._optimizer_spec = optimizer
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        self._metric_names = list(metrics or [])
        for m in self._metric_names:
            if not isinstance(m, str):
                raise TypeError(f"metrics must be names, got {type(m).__name__}")
        self.compiled = True

    def _fused(self):
        last = self._layers[-1]
        return (not self.loss.from_logits and isinstance(last, layers_module.Dense)
                and last.activation == self.loss.activation)

    def _metric_fns(self, y_pred, y_true):
        return [losses_module.metric(n, np.shape(y_true), y_pred.shape)
                for n in self._metric_names]

    def _figure_names(self):
        return ["loss"] + self._metric_names

    def _loss_names(self):
        """The figures that are a loss: in data-parallel training each rank's is its share
        of the global batch's mean (see _train_step)."""
        return ["loss"]

    def _figures(self, loss, out, y, mask, n=None):
        """The batch's figures; `n`: the samples its loss is the mean over (the global
        batch's, in data-parallel training, of which this rank's loss is its share)."""
        n = len(y) if n is None else n
        figures = _Totals()
        figures.add("loss", loss * n, n)
        for name, fn in self._metric_fns(out, y):
            figures.add(name, *fn(y, out, mask))
        return figures

    def _train_figures(self, x, y, dp=None, n=None):
        loss, out, mask = self._train_step(x, y, dp)
        return _Totals() if out is None else self._figures(loss, out, y, mask, n)

    def _eval_figures(self, x, y):
        fused = self._fused()
        out, mask = self._forward(x, False, logits=fused)
        loss, _ = self.loss.compute(y, out, mask, logits=fused)
        if fused:
            out = layers_module._ACTIVATIONS[self._layers[-1].activation][0](out)
        return self._figures(loss, out, y, mask)

    def _train_step(self, x, y, dp=None):
        """One optimizer step on one batch; returns (loss, outputs, mask). With `dp` (data
        parallel, lstmc.distributed.training.DataParallel) the batch is this rank's share of
        the global batch: the loss is divided by the global batch's number of positions and
        the gradients are summed over the ranks before the step, so every rank takes the
        step one process would on the whole batch; the loss returned is this rank's share of
        the global one."""
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before fit / evaluate")
        fused = self._fused()
        if dp is not None and len(x) == 0:       # a rank with no share of a short batch
            self._ensure_optimizer()
            self.zero_grad()
            dp.total(0)
            dp.gradients(self._trainable())
            self.optimizer.step()
            return 0.0, None, None
        out, mask = self._forward(x, True, logits=fused)
        self._ensure_optimizer()
        count = None if dp is None else dp.total(self.loss.count(out, mask))
        loss, dout = self.loss.compute(y, out, mask, logits=fused, count=count)
        self.zero_grad()
        self._backward(dout, fused)
        if dp is not None:
            dp.gradients(self._trainable())
        self.optimizer.step()
        if fused:
            out = layers_module._ACTIVATIONS[self._layers[-1].activation][0](out)
        return loss, out, mask

    def summary(self, print_fn=print):
        """A table of the layers, their output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer, shape in zip(self._layers, self._output_shapes()):
            shape_text = "?" if shape is None else str((None,) + tuple(shape))
            count = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
            kind = "Functional" if isinstance(layer, Model) else type(layer).__name__
            rows.append((f"{layer.name} ({kind})", shape_text, count))
        print_fn(_summary_table(self.name, rows, self.count_params()))

    # ---- saving -------------------------------------------------------------------------

    def _config(self):
        return {"name": self.name,
                "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [layers_module.serialize(l) for l in self._layers],
                "built_shapes": [None if l.built_shape is None else list(l.built_shape)
                                 for l in self._layers]}

    def save(self, filepath):
        """One file (lstmc.io format) with the architecture, the weights, and — once compiled
        — the loss, metrics and optimizer with its state. Written atomically.

        A quantized model (lstmc.quantize) keeps its quantized weights bit for bit: the
        config records their dtype ("quantized": {"dtype": "int8" or "bf16"}) and each
        layer's lstmc.nn module's stored form is saved under quantized/<layer name>/<name>
        (int8 matrices with float32 row scales or bf16 bits, float32 biases; see
        lstmc.nn._quantized) instead of the Keras weight list; the optimizer's state is not
        saved (it cannot train). Such a model is saved only in lstmc's format: a .keras /
        .h5 name raises ValueError, as Keras could not read it."""
        quantized = self.quantized
        config = {"model": self._config()}
        if quantized is None:
            arrays = _weight_arrays(self.get_weights())
        else:
            if os.fspath(filepath).lower().endswith((".keras", ".h5", ".hdf5")):
                raise ValueError(f"{self.name} is quantized ({quantized}): its weights are "
                                 "saved only in lstmc's own format (a .lstmc name), which "
                                 "lstmc.models.load_model reads back; Keras has no reader "
                                 "for them (save the float model for Keras)")
            config["model"]["quantized"] = {"dtype": quantized}
            arrays = _quantized_arrays(self)
        if self.compiled:
            opt = getattr(self.optimizer, "wrapped", self.optimizer)   # a distributed one's
            config["compile"] = {
                "optimizer": {"class_name": type(opt).__name__, "config": opt.get_config()},
                "loss": {"class_name": type(self.loss).__name__,
                         "config": self.loss.get_config()},
                "metrics": self._metric_names}
            if opt.built and quantized is None:
                config["compile"]["optimizer_state"] = io.encode(opt.state_dict(), arrays)
        io.write(filepath, _KIND, config, arrays)


class Model(_Trainer):
    """A functional model: the layers called between `inputs` and `outputs`, symbolic
    tensors made by `Input` and layer calls (a tensor, a list, or a dict of them).

        src = Input(shape=(None,), dtype="int32")
        h = LSTM(32)(Embedding(100, 16, mask_zero=True)(src))
        model = Model(src, Dense(1, activation="sigmoid")(h))

    Data for several inputs (or targets for several outputs) is a list in the order of
    `inputs` (`outputs`) or a dict by input (output) name; predict returns the outputs in the
    structure they were given. Layers run as the graph says (lstmc.keras.graph): shared
    layers, several inputs and outputs, masks as Keras propagates them, return_state outputs
    and initial_state= inputs. compile takes one loss for every output or a list / dict of
    losses, loss_weights and metrics likewise; fit / evaluate report "loss" (the weighted
    sum) and, with several outputs, "<output>_loss" and "<output>_<metric>" per output.
    """

    _file_kind = _MODEL_KIND   # the kind of its files

    def __init__(self, inputs, outputs, name=None):
        super().__init__(name or layers_module._auto_name("Functional"))
        self._in_keys, ins = _structure(inputs, "inputs")
        self._out_keys, outs = _structure(outputs, "outputs")
        self._graph = graph.Graph(ins, outs)
        self._layers = [l for l in self._graph.layers]
        for layer in self._layers:
            if not isinstance(layer, layers_module.InputLayer):
                self._modules[layer.name] = layer   # a child: parameters, train / eval
        self._inbound_nodes = []   # its calls on symbolic tensors, as a layer's
        self.built_shape = None
        self.input_names = [t.node.layer.name for t in ins]
        if isinstance(self._out_keys, list) and all(isinstance(k, str) for k in self._out_keys):
            self.output_names = list(self._out_keys)
        else:
            self.output_names = [t.name for t in outs]
        self._losses = []

    @property
    def inputs(self):
        return list(self._graph.inputs)

    @property
    def outputs(self):
        return list(self._graph.outputs)

    @property
    def built(self):
        return all(l.built for l in self._layers)

    # ---- data -------------------------------------------------------------------------------
    def _arrays(self, data, what, names, keys, allow_none=False):
        """The user's data for the inputs (or targets) -> a list of arrays in graph order."""
        n = len(names)
        if isinstance(data, dict):
            unknown = set(data) - set(names)
            if unknown:
                raise ValueError(f"{what}: unknown names {sorted(unknown)}; the model's are "
                                 f"{names}")
            values = [data.get(k) for k in names]
        elif isinstance(data, (list, tuple)):
            values = list(data)
        else:
            values = [data]
        if len(values) != n:
            raise ValueError(f"{what}: the model has {n} of them ({names}), got "
                             f"{len(values)} arrays")
        out = []
        for name, v in zip(names, values):
            if v is None:
                if not allow_none:
                    raise ValueError(f"{what}: no array for {name!r}")
                out.append(None)
            else:
                out.append(_array(v, f"{what}[{name!r}]"))
        return out

    def _xs(self, x):
        return self._arrays(x, "x", self.input_names, self._in_keys)

    def _check_data(self, x, y):
        xs = self._xs(x)
        ys = self._arrays(y, "y", self.output_names, self._out_keys, allow_none=True)
        counts = {len(a) for a in xs + ys if a is not None}
        if len(counts) > 1:
            raise ValueError(f"x and y must have the same number of samples, got "
                             f"{[len(a) for a in xs]} and "
                             f"{[None if a is None else len(a) for a in ys]}")
        return xs, ys, counts.pop()

    def _pack(self, outs):
        """Output arrays in the structure the outputs were given."""
        if self._out_keys is None:
            return outs[0]
        if isinstance(self._out_keys, dict):
            return dict(zip(self._out_keys["keys"], outs))
        return list(outs)

    # ---- running ----------------------------------------------------------------------------
    def _forward(self, xs, training, logits=()):
        self.train(training)
        xs = [_float_or_ids(x, t) for x, t in zip(xs, self._graph.inputs)]
        return self._graph.forward(xs, training, logits)

    def __call__(self, x, training=False, mask=None):
        """Outputs for `x`; on symbolic tensors the model is called as a layer of another
        graph (its weights shared with this model)."""
        if graph.is_symbolic(x):
            return graph.call_symbolic(self, list(x.values()) if isinstance(x, dict)
                                       else x, {})
        outs, _ = self._forward(self._xs(x), training)
        return self._pack(outs)

    # ---- as a layer of another functional model (lstmc.keras.graph calls these) ------------
    @property
    def dtype(self):
        return np.dtype(self._graph.outputs[0].dtype)

    def _check_call(self, call):
        if call.n_state or call.kwargs:
            raise ValueError(f"{self.name} is called on its inputs only (no initial_state= "
                             "or options)")

    def _symbolic_outputs(self, shapes, call):
        inputs = self._graph.inputs
        if len(shapes) != len(inputs):
            raise ValueError(f"{self.name} takes {len(inputs)} input tensors, got "
                             f"{len(shapes)}")
        for i, (shape, t) in enumerate(zip(shapes, inputs)):
            want = t.shape[1:]
            if len(shape) != len(want) or any(a is not None and b is not None and a != b
                                              for a, b in zip(shape, want)):
                raise ValueError(f"{self.name}: input {i} must have shape "
                                 f"{(None,) + tuple(want)}, got {(None,) + tuple(shape)}")
        return [(t.shape[1:], t.dtype) for t in self._graph.outputs]

    def _node_forward(self, xs, masks, training, call, logits=False):
        xs = [_float_or_ids(np.asarray(x), t) for x, t in zip(xs, self._graph.inputs)]
        return self._graph.forward(xs, training, masks=masks)

    def _node_backward(self, dys, call, logits=False):
        return self._graph.backward(dys)

    def get_config(self):
        return self._config()

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for `x` (an array, a list or a dict by input name), batch by batch
        (default 32), in inference mode, in the structure of the model's outputs."""
        xs = self._xs(x)
        n = len(xs[0])
        if n == 0:
            raise ValueError("predict needs at least one sample")
        if any(len(a) != n for a in xs):
            raise ValueError(f"the inputs must have the same number of samples, got "
                             f"{[len(a) for a in xs]}")
        bs = _batch_size(batch_size)
        parts = [self._forward([a[i:i + bs] for a in xs], False)[0] for i in range(0, n, bs)]
        return self._pack([np.concatenate(p) for p in zip(*parts)])

    # ---- training ---------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None):
        """optimizer as Sequential's; loss: one loss (name or lstmc.losses.Loss) for every
        output, or a list (None: that output is not trained) or a dict by output name;
        loss_weights: a list or dict of the losses' factors in "loss" (default 1); metrics:
        a list of names for every output, a list of lists, or a dict by output name."""
        if loss is None:
            raise ValueError("compile needs a loss")
        names = self.output_names
        losses = self._per_output(loss, "loss")
        self._losses = [None if l is None else losses_module.get(l) for l in losses]
        if all(l is None for l in self._losses):
            raise ValueError("compile needs a loss for at least one output")
        weights = self._per_output(loss_weights, "loss_weights") if loss_weights is not None \
            else [1.0] * len(names)
        self._loss_weights = [1.0 if w is None else float(w) for w in weights]
        if metrics is None or (isinstance(metrics, (list, tuple)) and
                               all(isinstance(m, str) for m in metrics)):
            per = [list(metrics or [])] * len(names)
        else:
            per = [list(m or []) for m in self._per_output(metrics, "metrics")]
        for ms in per:
            for m in ms:
                if not isinstance(m, str):
                    raise TypeError(f"metrics must be names, got {type(m).__name__}")
        self._metrics = per
        self._optimizer_spec = optimizer
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = self._losses[0] if len(self._losses) == 1 else self._losses
        self._metric_names = self._figure_names()[1:]
        self.compiled = True

    def _per_output(self, value, what):
        names = self.output_names
        if isinstance(value, dict):
            unknown = set(value) - set(names)
            if unknown:
                raise ValueError(f"{what}: unknown outputs {sorted(unknown)}; the model's are "
                                 f"{names}")
            return [value.get(k) for k in names]
        if isinstance(value, (list, tuple)) and not isinstance(value, str):
            if len(value) != len(names):
                raise ValueError(f"{what}: the model has {len(names)} outputs ({names}), got "
                                 f"{len(value)} entries")
            return list(value)
        return [value] * len(names)

    def _multi(self):
        return len(self.output_names) > 1

    def _figure_names(self):
        """Keras' order: the total loss, each output's loss, then each output's metrics."""
        trained = [i for i, loss in enumerate(self._losses) if loss is not None]
        if not self._multi():
            return ["loss"] + [m for i in trained for m in self._metrics[i]]
        return (["loss"] + [f"{self.output_names[i]}_loss" for i in trained]
                + [f"{self.output_names[i]}_{m}" for i in trained for m in self._metrics[i]])

    def _fused(self):
        """Output positions whose Dense layer's activation the loss undoes: the loss takes
        its logits (as Sequential's last layer) unless the output feeds other layers too or
        the Dense is shared."""
        out = []
        g = self._graph
        for i, (t, loss) in enumerate(zip(g.outputs, self._losses)):
            layer = t.node.layer
            if (loss is not None and not loss.from_logits
                    and isinstance(layer, layers_module.Dense)
                    and layer.activation == loss.activation and g.consumers[id(t)] == 0
                    and len(g.calls[layer]) == 1
                    and sum(o is t for o in g.outputs) == 1):
                out.append(i)
        return out

    def _loss_names(self):
        return [n for n in self._figure_names() if n == "loss" or
                (self._multi() and n in {f"{o}_loss" for o in self.output_names})]

    def _figures(self, outs, masks, ys, fused, dp=None, n=None):
        """(_Totals of the batch, the outputs' gradients). With `dp` each loss is divided by
        the global batch's count of positions (so the ranks' shares sum to the global mean)
        and counted as the `n` samples of the global batch."""
        figures = _Totals()
        if n is None:
            n = len(outs[0])
        total, douts = 0.0, []
        for i, (out, mask, y, loss) in enumerate(zip(outs, masks, ys, self._losses)):
            if loss is None:
                douts.append(None)
                continue
            if y is None:
                raise ValueError(f"y: no target for output {self.output_names[i]!r}, which "
                                 "has a loss")
            count = None if dp is None else dp.total(loss.count(out, mask))
            value, d = loss.compute(y, out, mask, logits=i in fused, count=count)
            w = self._loss_weights[i]
            total += w * value
            douts.append(d * d.dtype.type(w) if w != 1 else d)
            if i in fused:   # the metrics see the activation's output
                activation = self._graph.outputs[i].node.layer.activation
                out = layers_module._ACTIVATIONS[activation][0](out)
            prefix = f"{self.output_names[i]}_" if self._multi() else ""
            if self._multi():
                figures.add(prefix + "loss", value * n, n)
            for m in self._metrics[i]:
                _, fn = losses_module.metric(m, np.shape(y), out.shape)
                figures.add(prefix + m, *fn(y, out, mask))
        figures.add("loss", total * n, n)
        figures.sums = {k: figures.sums[k] for k in self._figure_names()}
        figures.counts = {k: figures.counts[k] for k in self._figure_names()}
        return figures, douts

    def _train_figures(self, x, y, dp=None, n=None):
        """One optimizer step on a batch -> its figures. With `dp` (data parallel, see
        Sequential._train_step) the batch is this rank's share of the global one of `n`
        samples."""
        if not self.compiled:
            raise RuntimeError("call compile(optimizer, loss) before fit / evaluate")
        self._ensure_optimizer()
        if dp is not None and len(x[0]) == 0:   # a rank with no share of a short batch
            for loss in self._losses:
                if loss is not None:
                    dp.total(0)
            self.zero_grad()
            dp.gradients(self._trainable())
            self.optimizer.step()
            return _Totals()
        fused = self._fused()
        outs, masks = self._forward(x, True, fused)
        figures, douts = self._figures(outs, masks, y, fused, dp, n)
        self.zero_grad()
        self._graph.backward(douts, fused)
        if dp is not None:
            dp.gradients(self._trainable())
        self.optimizer.step()
        return figures

    def _eval_figures(self, x, y):
        fused = self._fused()
        outs, masks = self._forward(x, False, fused)
        return self._figures(outs, masks, y, fused)[0]

    def summary(self, print_fn=print):
        """A table as Keras': each layer, its output shape(s), parameters and the tensors it
        is connected to (layer[call][output])."""
        g = self._graph

        def ref(t):
            return f"{t.node.layer.name}[{g.call_index[t.node]}][{t.index}]"

        rows = [("Layer (type)", "Output Shape", "Param #", "Connected to")]
        for layer in self._layers:
            nodes = g.calls.get(layer) or [t.node for t in g.inputs if t.node.layer is layer]
            shapes = [t.shape for t in nodes[0].outputs]
            shape_text = str(shapes[0]) if len(shapes) == 1 else \
                "[" + ", ".join(str(s) for s in shapes) + "]"
            links = [ref(t) for node in nodes for t in node.inputs]
            kind = "Functional" if isinstance(layer, Model) else type(layer).__name__
            rows.append((f"{layer.name} ({kind})", shape_text,
                         f"{layer.count_params():,}", ", ".join(links) or "-"))
        print_fn(_summary_table(self.name, rows, self.count_params()))

    # ---- saving -----------------------------------------------------------------------------
    def _config(self):
        """The graph: each layer's config, then each call (node) in running order with its
        inputs as [layer name, call index in this model, output index]."""
        g = self._graph

        def ref(t):
            return [t.node.layer.name, g.call_index[t.node], t.index]

        return {"name": self.name,
                "layers": [layers_module.serialize(l) for l in self._layers],
                "built_shapes": [_shape_config(l.built_shape) for l in self._layers],
                "nodes": [{"layer": n.layer.name, "inputs": [ref(t) for t in n.inputs],
                           "listed": n.call.listed, "n_state": n.call.n_state,
                           "kwargs": n.call.kwargs} for n in g.nodes],
                "inputs": [ref(t) for t in g.inputs], "outputs": [ref(t) for t in g.outputs],
                "input_keys": self._in_keys, "output_keys": self._out_keys}

    @classmethod
    def _from_config(cls, mc):
        layers = {}
        for spec, shape in zip(mc["layers"], mc["built_shapes"]):
            layer = cls._from_config(spec["config"]) if spec.get("class_name") == "Model" \
                else layers_module.deserialize(spec)
            if shape is not None and not isinstance(layer, layers_module.InputLayer):
                layer.build(_shape_of_config(shape))
            layers[layer.name] = layer
        made = {}   # (layer name, call index) -> output tensors
        for name, layer in layers.items():
            if isinstance(layer, layers_module.InputLayer):
                made[(name, 0)] = [layer.output]
        calls = {}
        for node in mc["nodes"]:
            name = node["layer"]
            ins = [made[(r[0], r[1])][r[2]] for r in node["inputs"]]
            k = len(ins) - node["n_state"]
            x = ins[:k] if node["listed"] else ins[0]
            kwargs = dict(node["kwargs"])
            if node["n_state"]:
                kwargs["initial_state"] = ins[k:]
            out = layers[name](x, **kwargs)
            i = calls.get(name, 0)
            calls[name] = i + 1
            made[(name, i)] = out if isinstance(out, list) else [out]
        ins = [made[(r[0], r[1])][r[2]] for r in mc["inputs"]]
        outs = [made[(r[0], r[1])][r[2]] for r in mc["outputs"]]
        return cls(_unstructure(mc["input_keys"], ins), _unstructure(mc["output_keys"], outs),
                   name=mc["name"])

    def save(self, filepath):
        """One file (lstmc.io format) with the graph, the weights and — once compiled — the
        losses, metrics, loss weights and the optimizer with its state. Written
        atomically. A quantized functional model (lstmc.quantize) is not saved yet: save
        the float model and quantize it after loading."""
        if self.quantized is not None:
            raise ValueError(f"{self.name} is quantized ({self.quantized}): a quantized "
                             "functional Model is not saved yet; save the float model and "
                             "quantize it after load_model")
        config = {"model": self._config()}
        arrays = _weight_arrays(self.get_weights())
        if self.compiled:
            opt = self.optimizer
            config["compile"] = {
                "optimizer": {"class_name": type(opt).__name__, "config": opt.get_config()},
                "losses": [None if l is None else {"class_name": type(l).__name__,
                                                   "config": l.get_config()}
                           for l in self._losses],
                "loss_weights": self._loss_weights, "metrics": self._metrics}
            if opt.built:
                config["compile"]["optimizer_state"] = io.encode(opt.state_dict(), arrays)
        io.write(filepath, _MODEL_KIND, config, arrays)




def _structure(value, what):
    """A tensor, a list or a dict of tensors -> (how to rebuild it, the flat list)."""
    if isinstance(value, dict):
        keys = sorted(value)   # Keras flattens a dict in the order of its sorted keys
        return {"keys": keys}, [value[k] for k in keys]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"a Model needs at least one of its {what}")
        return [None] * len(value), list(value)
    return None, [value]


def _unstructure(keys, tensors):
    if keys is None:
        return tensors[0]
    if isinstance(keys, dict):
        return dict(zip(keys["keys"], tensors))
    return list(tensors)


def _shape_config(shape):
    if shape is None:
        return None
    if shape and isinstance(shape[0], (tuple, list)):
        return {"list": [list(s) for s in shape]}
    return list(shape)


def _shape_of_config(shape):
    if isinstance(shape, dict):
        return [tuple(s) for s in shape["list"]]
    return tuple(shape)


def _float_or_ids(x, tensor):
    """An input array for its Input: integer inputs stay integers (token ids)."""
    kind = np.dtype(tensor.dtype).kind
    if kind in "iu":
        return x
    return x.astype(tensor.dtype, copy=False) if x.dtype.kind in "fiub" else x


def load_model(filepath, compile=True):
    """The model `Sequential.save` wrote, with its weights and (if it was compiled and
    `compile`) its optimizer state: predictions are bit-identical to the saved model's.

    A Keras file (`.keras`, `.h5`, `.hdf5`) is read with h5py alone (`lstmc[keras]`) into an
    uncompiled Sequential of lstmc's layers, or a functional Model for a graph that is not a
    chain: see `lstmc.keras.files`. A functional Model's own file gives a Model. What lstmc saved is
    read as lstmc's, whatever the file's name (`save("model.keras")` writes lstmc's format)."""
    if os.fspath(filepath).lower().endswith((".keras", ".h5", ".hdf5")) \
            and not io.is_lstmc_file(filepath):
        from lstmc.keras import files
        return files.load(filepath)
    config, arrays = io.read(filepath, kind=(_KIND, _MODEL_KIND))
    if "nodes" in config.get("model", {}):
        return _load_functional(filepath, config, arrays, compile)
    try:
        mc = config["model"]
        model = Sequential(name=mc["name"])
        for spec, shape in zip(mc["layers"], mc["built_shapes"]):
            layer = layers_module.deserialize(spec)
            if shape is not None:
                layer.build(tuple(shape))
            model.add(layer)
        if mc["input_shape"] is not None:
            model.build((None,) + tuple(mc["input_shape"]))
        if mc.get("quantized") is None:
            model.set_weights(_weights_of(arrays))
        else:
            model = _load_quantized(model, mc["quantized"], arrays)
        cc = config.get("compile")
        if compile and cc is not None:
            opt = optimizers_module.deserialize(cc["optimizer"]["class_name"],
                                                cc["optimizer"]["config"])
            loss = losses_module.deserialize(cc["loss"]["class_name"], cc["loss"]["config"])
            model.compile(opt, loss, cc["metrics"])
            if "optimizer_state" in cc:
                model._ensure_optimizer()
                model.optimizer.load_state_dict(io.decode(cc["optimizer_state"], arrays,
                                                          filepath))
    except (KeyError, TypeError, ValueError) as e:
        raise io.FormatError(f"{filepath}: the saved model does not fit together: {e}") \
            from e
    return model


def _load_functional(filepath, config, arrays, compile):
    """The functional Model `Model.save` wrote (see load_model)."""
    try:
        model = Model._from_config(config["model"])
        model.set_weights(_weights_of(arrays))
        cc = config.get("compile")
        if compile and cc is not None:
            opt = optimizers_module.deserialize(cc["optimizer"]["class_name"],
                                                cc["optimizer"]["config"])
            losses = [None if l is None else
                      losses_module.deserialize(l["class_name"], l["config"])
                      for l in cc["losses"]]
            model.compile(opt, losses, cc["metrics"], cc["loss_weights"])
            if "optimizer_state" in cc:
                model._ensure_optimizer()
                model.optimizer.load_state_dict(io.decode(cc["optimizer_state"], arrays,
                                                          filepath))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise io.FormatError(f"{filepath}: the saved model does not fit together: {e}") \
            from e
    return model


def _quantized_arrays(model):
    """A quantized model's weights as named file arrays: the stored form of each layer's
    lstmc.nn module (its state_dict) under quantized/<layer name>/."""
    return {f"quantized/{layer.name}/{key}": value for layer in model._layers
            for module in layer._inner_modules() for key, value in module.state_dict().items()}


def _load_quantized(model, spec, arrays):
    """The quantized copy of the float `model` built from a file's config, running the
    stored quantized weights of `arrays` (what _quantized_arrays wrote)."""
    from lstmc._quantize import quantize
    if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str):
        raise ValueError(f"config field quantized must be {{'dtype': name}}, got {spec!r}")
    model = quantize(model, spec["dtype"])
    listed = {name for name in arrays if name.startswith("quantized/")}
    for layer in model._layers:
        for module in layer._inner_modules():
            prefix = f"quantized/{layer.name}/"
            state = {name[len(prefix):]: arrays[name] for name in arrays
                     if name.startswith(prefix)}
            try:
                module.load_state_dict(state)
            except (TypeError, ValueError) as e:
                raise ValueError(f"layer {layer.name!r} (arrays {prefix}*): {e}") from None
            listed -= {prefix + key for key in state}
    if listed:
        raise ValueError(f"arrays of no layer: {sorted(listed)}")
    return model


def _weight_arrays(weights):
    """A model's weight list as named file arrays (weights/0, weights/1, ...)."""
    return {f"weights/{i}": w for i, w in enumerate(weights)}


def _weights_of(arrays):
    """The weight list `_weight_arrays` stored."""
    n = sum(1 for name in arrays if name.startswith("weights/"))
    return [arrays[f"weights/{i}"] for i in range(n)]


class _Totals:
    """Running sums and counts of the epoch's figures."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, name, total, count):
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def merge(self, other):
        for name in other.sums:
            self.add(name, other.sums[name], other.counts[name])

    def logs(self):
        return {k: self.sums[k] / max(self.counts[k], 1) for k in self.sums}


def _take(data, idx):
    """Rows `idx` (an index array or a slice) of an array, or of each array of a list or
    dict (a functional model's inputs and targets)."""
    if isinstance(data, dict):
        return {k: None if v is None else v[idx] for k, v in data.items()}
    if isinstance(data, list):
        return [None if v is None else v[idx] for v in data]
    return data[idx]


def _array(value, name):
    if value is None:
        raise ValueError(f"{name} is required")
    arr = to_numpy(value)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar")
    return arr


def _batch_size(batch_size):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _summary_table(name, rows, total):
    """Keras' summary: rows (the header first) of layer, output shape, parameter count (right
    aligned) and any more columns, then the totals of `total` float32 parameters."""
    n = len(rows[0])
    w = [max(len(r[i]) for r in rows) + 2 for i in range(n)]
    rule = "-" * (sum(w) + n - 1)
    lines = [f'Model: "{name}"', rule]
    for i, row in enumerate(rows):
        cells = [f"{v:>{w[k]}}" if k == 2 else f"{v:<{w[k]}}" for k, v in enumerate(row)]
        lines.append(" ".join(cells).rstrip())
        lines.append("=" * len(rule) if i == 0 else rule)
    lines.append(f" Total params: {total:,} ({_bytes(total * 4)})")
    lines.append(f" Trainable params: {total:,} ({_bytes(total * 4)})")
    lines.append(" Non-trainable params: 0 (0.00 B)")
    return "\n".join(lines)


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
