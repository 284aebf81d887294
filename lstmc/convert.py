"""`python -m lstmc convert IN OUT` and `python -m lstmc inspect FILE`: model files between
lstmc and the formats it reads and writes.

    .keras / .h5 / .hdf5  ->  .lstmc or .onnx    (lstmc.models.load_model, then save / export)
    .lstmc                ->  .onnx              (lstmc.onnx.export)
    .onnx                 ->  .lstmc             (a graph that is a chain of lstmc's layers)

An ONNX graph converts when it computes a chain of layers lstmc has: Embedding, LSTM / GRU /
RNN nodes (any direction, stacked), Dense (MatMul / Gemm by a constant, a constant bias, a
Relu / Tanh / Sigmoid / Softmax after it), with the exporters' layout glue between them (and
the masks of lstmc's own Keras-face exports). The result is a Keras-face
`lstmc.models.Sequential`, lstmc's model file (load it with `lstmc.models.load_model`,
fine-tune it with `fit`): one input, batch-first, one output. A time-major graph converts to
the same function in the batch-first layout, and convert prints that, and the graph outputs
(final states) the model leaves out. Refused, with lstmc.io.UnsupportedModelError naming the
node: other operators on the data path (LayerNormalization, LogSoftmax, residual Adds, ...),
branches, an activation without a Dense before it, weights or initial states fed as graph
inputs, sequence_lens fed by a graph input (lstmc's models take lengths only as
Embedding(mask_zero=True) masks), and what lstmc.onnx.load itself refuses. Before writing,
the converted model and lstmc.onnx.load's session of the file run on the same random inputs
of the graph's declared shapes; a file whose outputs differ beyond float rounding is not
written (docs/spec.md section 9). It can run as it is with lstmc.onnx.load instead.

`inspect` prints a model's layers, shapes and parameter count, or an ONNX file's inputs,
outputs, parameters and which of its nodes run on lstmc's kernels and which over numpy,
whether lstmc can run it at all, and whether it converts to an lstmc model file.
"""
import os

_KERAS = (".keras", ".h5", ".hdf5")


def _kind(path):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in _KERAS:
        return "keras"
    if ext in (".lstmc", ".onnx"):
        return ext[1:]
    raise ValueError(f"{os.fspath(path)}: unknown model file kind {ext or '(no extension)'!r}; "
                     f"lstmc reads .lstmc, .onnx, {', '.join(_KERAS)}")


def convert(src, dst):
    """Writes the model in file `src` to file `dst`, the kinds taken from their extensions.
    Returns notes on conventions that differ between the two files (a list of str; an ONNX
    source's time-major input or output, the graph outputs the lstmc model leaves out)."""
    from lstmc.keras.models import load_model

    src_kind, dst_kind = _kind(src), _kind(dst)
    if dst_kind == "keras":
        raise ValueError(f"{os.fspath(dst)}: lstmc reads Keras files but does not write them; "
                         "write .lstmc or .onnx")
    if src_kind == dst_kind:
        raise ValueError(f"{os.fspath(src)} and {os.fspath(dst)} are both .{src_kind} files")
    if src_kind == "onnx":
        conversion = from_onnx(src)
        conversion.model.save(dst)
        return conversion.notes
    model = load_model(src, compile=False)
    if dst_kind == "lstmc":
        model.save(dst)
    else:
        import lstmc.onnx
        lstmc.onnx.export(model, dst)
    return []


def from_onnx(src):
    """The lstmc model (a Keras-face Sequential) of the ONNX file `src` (a path, bytes or an
    onnx.ModelProto) and its notes, as lstmc.onnx._convert.Conversion; checked against
    lstmc.onnx.load's session of the file on random inputs (module docstring)."""
    from lstmc.onnx._convert import to_sequential
    from lstmc.onnx._session import _model_proto

    try:
        import onnx
    except ImportError:
        raise ImportError("converting ONNX files needs the onnx package: "
                          "pip install 'lstmc[onnx]'") from None
    return to_sequential(_model_proto(src, onnx))


def inspect(path, print_fn=print):
    """Prints what the model file `path` holds and how lstmc runs it."""
    kind = _kind(path)
    if kind != "onnx":
        from lstmc.keras.models import load_model

        model = load_model(path, compile=False)
        model.summary(print_fn=print_fn)
        print_fn("Runs on lstmc: the recurrent layers on its C kernels, the others over numpy.")
        if model.quantized:
            print_fn(f"Quantized: {model.quantized} weights (lstmc.quantize; inference only).")
        return
    _inspect_onnx(path, print_fn)


def _inspect_onnx(path, print_fn):
    import lstmc.onnx

    try:
        import onnx
    except ImportError:
        raise ImportError("inspecting ONNX files needs the onnx package: "
                          "pip install 'lstmc[onnx]'") from None
    model = onnx.load(os.fspath(path))
    g = model.graph
    params = sum(int(_count(t.dims)) for t in g.initializer)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    print_fn(f'ONNX model "{g.name}" (opsets: {opsets}; producer: '
             f"{model.producer_name or '?'} {model.producer_version})")
    print_fn(f" {len(g.node)} nodes, {params:,} parameters in {len(g.initializer)} "
             "initializers")
    try:
        sess = lstmc.onnx.load(model)
    except lstmc.onnx.UnsupportedModelError as e:
        print_fn(f" lstmc cannot run it: {e}")
        return
    for title, args in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
        print_fn(f" {title}:")
        for a in args:
            print_fn(f"   {a.name}: {a.type} {a.shape}")
    run = sess.nodes()
    kernels = [f"{name} ({op})" for name, op in run if op in ("LSTM", "GRU", "RNN")]
    others = {}
    for _, op in run:
        if op not in ("LSTM", "GRU", "RNN"):
            others[op] = others.get(op, 0) + 1
    print_fn(f" runs on lstmc: {len(run)} nodes a call ({len(g.node) - len(run)} folded at "
             "load)")
    print_fn(f"   on lstmc's kernels: {', '.join(kernels) or 'none'}")
    print_fn("   over numpy: " + (", ".join(f"{op} x{n}" for op, n in sorted(others.items()))
                                  or "none"))
    try:
        conversion = from_onnx(model)
    except lstmc.onnx.UnsupportedModelError as e:
        print_fn(f" does not convert to an lstmc model file: {e}")
        return
    print_fn(" converts to an lstmc model file (convert FILE OUT.lstmc): Sequential of "
             + ", ".join(_describe(layer) for layer in conversion.model.layers))
    for note in conversion.notes:
        print_fn(f"   note: {note}")


def _describe(layer):
    inner = getattr(layer, "layer", None)
    return f"{type(layer).__name__}({_describe(inner)})" if inner is not None \
        else type(layer).__name__


def _count(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def add_convert_arguments(p):
    p.add_argument("src", metavar="IN", help="a .keras, .h5, .onnx or .lstmc model file")
    p.add_argument("dst", metavar="OUT", help="the .lstmc or .onnx file to write")


def add_inspect_arguments(p):
    p.add_argument("path", metavar="FILE", help="a .lstmc, .keras, .h5 or .onnx model file")


def run_convert(args):
    notes = convert(args.src, args.dst)
    print(f"wrote {args.dst}")
    for note in notes:
        print(f"  note: {note}")


def run_inspect(args):
    inspect(args.path)
