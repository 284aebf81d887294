"""The one file format lstmc saves in: `write` / `read` for models, `save` / `load` for
checkpoints.

A file is a zip archive (members stored, not compressed, like numpy's .npz):

    lstmc.json        always the first member: {"magic": "lstmc", "format_version": 1,
                      "kind": ..., "lstmc_version": ..., "config": {...},
                      "arrays": [{"name": ..., "dtype": "<f4", "shape": [...]}, ...]}
    <name>.npy        one member per array, in the header's order, in numpy's .npy format

`kind` names what the file holds (e.g. "lstmc.models.Sequential"), `config` is whatever JSON
the writer needs to rebuild it, and the arrays are stored bit for bit. `numpy.load(path)`
opens the arrays too. Every member carries a CRC-32, so damage anywhere that matters is
found on reading; the array payloads are parsed here, never unpickled, and never allocate
more than the file's own size.

Writes are atomic: the archive goes to a temporary file in the target's directory, is
flushed to disk, and only then renamed over `path`, so a failed save leaves any earlier
file untouched and no partial file behind.
"""
import json
import math
import os
import secrets
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

__all__ = ["FormatError", "write", "read", "save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MAGIC = "lstmc"
HEADER = "lstmc.json"
SAVE_KIND = "lstmc.save"

_ZIP_LOCAL_MAGIC = b"PK\x03\x04"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)     # a fixed timestamp: the same content, the same bytes
_CHUNK = 1 << 24                      # read array payloads 16 MB at a time
_DTYPE_KINDS = "biufc"                # bool, signed, unsigned, float, complex
# what zipfile, json and numpy's .npy parser raise on damaged bytes (RuntimeError and
# NotImplementedError: flag bits turned into "encrypted" or an unknown zip version)
_DAMAGE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error,
                  RuntimeError, NotImplementedError)


class FormatError(ValueError):
    """A file that is not a readable lstmc file: not one at all, truncated, damaged, from a
    newer lstmc, or holding something other than what the caller expected."""


class UnsupportedModelError(ValueError):
    """A readable model from another framework's file (ONNX, Keras) that lstmc cannot run
    exactly: the message names the node or layer, its op and the attribute or option lstmc
    lacks. lstmc never runs an approximation instead. Raised by lstmc.onnx.load and by
    lstmc.models.load_model on .keras / .h5 files (lstmc.onnx.UnsupportedModelError and
    lstmc.keras.files.UnsupportedModelError are this class)."""


# ---- writing ----------------------------------------------------------------------------
def write(path, kind, config, arrays):
    """Writes one lstmc file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Its directory must exist; an existing file is replaced only once the
        new one is completely on disk.
    kind : str
        What the file holds, e.g. "lstmc.models.Sequential"; `read(path, kind=...)` checks it.
    config : dict
        JSON-serialisable description with finite floats; `read` returns it as JSON gives
        it back (tuples as lists, dict keys as str).
    arrays : mapping str -> array
        Ordered name -> array of a bool or numeric dtype, any shape including 0-d and empty.
        Names may contain "/" and "." but not "..", a leading "/", "\\" or NUL.
    """
    path = os.fsdecode(path)
    header, arrays = _header(kind, config, arrays)
    directory = os.path.dirname(os.path.abspath(path))
    tmp, fd = _create_temporary(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            _write_zip(f, header, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _header(kind, config, arrays):
    """Checks the arguments of `write` and returns the header dict and the arrays as an
    ordered list of (name, ndarray); nothing is written before this succeeds."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty str, got {kind!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping name -> array, got {type(arrays).__name__}")
    checked, specs = [], []
    for name, value in arrays.items():
        _check_array_name(name)
        arr = np.asarray(value)
        if arr.dtype.kind not in _DTYPE_KINDS:
            raise TypeError(f"arrays[{name!r}] has dtype {arr.dtype}; supported: bool, "
                            "integer, floating and complex dtypes")
        checked.append((name, arr))
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
    header = {"magic": MAGIC, "format_version": FORMAT_VERSION, "kind": kind,
              "lstmc_version": _lstmc_version(), "config": dict(config), "arrays": specs}
    try:
        json.dumps(header["config"], allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-serialisable with finite floats: {e}") from None
    return header, checked


def _check_array_name(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"array names must be non-empty str, got {name!r}")
    if name.startswith("/") or "\\" in name or "\0" in name or ".." in name.split("/"):
        raise ValueError(f"array name {name!r} must not start with '/' or contain '\\', "
                         "NUL or a '..' component")


def _lstmc_version():
    import lstmc     # at call time: lstmc/__init__ imports this module
    return lstmc.__version__


def _create_temporary(directory, base):
    """A new file next to the target, created with the umask's permissions (like any new
    file), hidden and unique."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _zip_info(name):
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _write_zip(f, header, arrays):
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(_zip_info(HEADER), json.dumps(header, allow_nan=False).encode())
        for name, arr in arrays:
            big = arr.nbytes + 65536 >= zipfile.ZIP64_LIMIT
            with zf.open(_zip_info(name + ".npy"), "w", force_zip64=big) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_directory(directory):
    """Makes the rename itself durable where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- reading ----------------------------------------------------------------------------
def read(path, kind=None):
    """Reads an lstmc file written by `write`.

    Parameters
    ----------
    path : str or os.PathLike
    kind : str or tuple of str, optional
        If given, the file must hold this kind (one of these kinds).

    Returns
    -------
    config : dict
        The JSON config as written.
    arrays : dict str -> ndarray
        The arrays in the order written, bit-identical, writable.

    Raises
    ------
    FormatError
        Not an lstmc file, truncated, damaged (CRC), incomplete header, a newer format
        version, another kind than `kind`, or arrays that disagree with the header.
    FileNotFoundError
        No file at `path`.
    """
    path = os.fsdecode(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _check_signature(f, path)
        try:
            zf = zipfile.ZipFile(f)
        except _DAMAGE_ERRORS as e:
            raise FormatError(f"{path}: truncated or damaged lstmc file ({_why(e)})") from None
        with zf:
            header = _read_header(zf, path, size)
            kinds = (kind,) if isinstance(kind, str) else kind
            if kinds is not None and header["kind"] not in kinds:
                expected = kind if isinstance(kind, str) else " or ".join(kind)
                raise FormatError(f"{path}: file holds {header['kind']}, expected {expected}")
            arrays = {}
            for spec in header["arrays"]:
                arrays[spec["name"]] = _read_array(zf, spec, path, size)
    return header["config"], arrays


def is_lstmc_file(path):
    """Whether `path` starts as an lstmc file does (a zip whose first member is lstmc.json),
    whatever its name: `Sequential.save("model.keras")` writes lstmc's format."""
    try:
        with open(path, "rb") as f:
            _check_signature(f, path)
    except (OSError, FormatError):
        return False
    return True


def _check_signature(f, path):
    """An lstmc file starts with a zip local header naming lstmc.json; telling "not ours"
    apart from "ours but cut short" makes the error say which."""
    head = f.read(30 + len(HEADER))
    f.seek(0)
    if not head:
        raise FormatError(f"{path}: empty file, not an lstmc file")
    if not _ZIP_LOCAL_MAGIC.startswith(head[:4]):
        raise FormatError(f"{path}: not an lstmc file (it is not a zip archive)")
    if len(head) < 30 + len(HEADER):
        raise FormatError(f"{path}: truncated lstmc file ({len(head)} bytes)")
    name_length = struct.unpack("<H", head[26:28])[0]
    if head[30:30 + name_length] != HEADER.encode():
        raise FormatError(f"{path}: not an lstmc file (a zip archive whose first member is "
                          f"not {HEADER}; an .npz file is read with numpy.load)")


def _member(zf, name, path, size):
    """The ZipInfo of a member, checked to be stored and to lie within the file, so that a
    damaged size can never make a read allocate more than the file holds."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"{path}: damaged member {name} (compressed: lstmc stores members "
                          "uncompressed)")
    if info.file_size != info.compress_size \
            or not 0 <= info.header_offset <= size - info.compress_size:
        raise FormatError(f"{path}: damaged member {name} (its sizes do not fit the file)")
    return info


def _read_header(zf, path, size):
    info = _member(zf, HEADER, path, size)
    if info is None:
        raise FormatError(f"{path}: truncated or damaged lstmc file (no {HEADER})")
    try:
        header = json.loads(zf.read(info).decode())
    except _DAMAGE_ERRORS as e:     # json and unicode errors are ValueErrors
        raise FormatError(f"{path}: damaged member {HEADER} ({_why(e)})") from None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise FormatError(f"{path}: not an lstmc file ({HEADER} lacks the magic {MAGIC!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{path}: header field format_version must be a positive int, got "
                          f"{version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{path}: written in format version {version} by lstmc "
                          f"{header.get('lstmc_version', '?')}; this lstmc "
                          f"({_lstmc_version()}) reads up to version {FORMAT_VERSION}: "
                          "upgrade lstmc")
    for field, types in (("kind", str), ("config", dict), ("arrays", list)):
        if field not in header:
            raise FormatError(f"{path}: header lacks the field {field!r}")
        if not isinstance(header[field], types):
            raise FormatError(f"{path}: header field {field!r} must be a {types.__name__}, "
                              f"got {type(header[field]).__name__}")
    for spec in header["arrays"]:
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
                and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)
                and all(isinstance(n, int) and n >= 0 for n in spec["shape"])):
            raise FormatError(f"{path}: header lists a malformed array entry {spec!r}")
    return header


def _why(e):
    return str(e) or type(e).__name__


def _read_array(zf, spec, path, size):
    """One .npy member: its own header must match the lstmc header, its payload must have
    exactly the bytes that shape and dtype need; read into a fresh array."""
    name, member = spec["name"], spec["name"] + ".npy"
    info = _member(zf, member, path, size)
    if info is None:
        raise FormatError(f"{path}: array {name!r} listed in the header is missing")
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy version {version} is not one lstmc writes")
            expected = (spec["dtype"], tuple(spec["shape"]))
            if (dtype.str, shape) != expected or dtype.kind not in _DTYPE_KINDS:
                raise FormatError(f"{path}: array {name!r} holds {dtype.str} {shape}, the "
                                  f"header says {expected[0]} {expected[1]}")
            count = math.prod(shape)
            if info.file_size - f.tell() != count * dtype.itemsize:
                raise FormatError(f"{path}: array {name!r} has {info.file_size - f.tell()} "
                                  f"payload bytes, {dtype.str} {shape} needs "
                                  f"{count * dtype.itemsize}")
            flat = np.empty(count, dtype=dtype)
            raw = flat.view(np.uint8)
            for start in range(0, raw.size, _CHUNK):
                chunk = raw[start:start + _CHUNK]
                if f.readinto(chunk) != chunk.size:
                    raise EOFError("the payload ends early")
            f.read(1)     # reaching the member's end checks its CRC-32
    except FormatError:
        raise
    except _DAMAGE_ERRORS as e:
        raise FormatError(f"{path}: damaged member {member} ({_why(e)})") from None
    return flat.reshape(shape, order="F" if fortran else "C")


# ---- save / load: nested structures (torch.save-like) -------------------------------------
def save(obj, path):
    """Saves a nested structure atomically, e.g. a checkpoint::

        lstmc.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": 3}, "ckpt.lstmc")

    `obj` may nest dicts (str or int keys; key types and order are kept), lists, tuples,
    numpy arrays and numpy scalars (stored bit for bit) and int, float (nan and inf too),
    str, bool and None. Anything else is a TypeError naming where it sits in `obj`.
    Shared or repeated arrays are stored once per occurrence and load as separate arrays.
    """
    arrays = {}
    write(path, SAVE_KIND, {"tree": encode(obj, arrays)}, arrays)


def load(path):
    """Loads what `save` wrote: the same structure with numpy arrays (never unpickles)."""
    config, arrays = read(path, kind=SAVE_KIND)
    if "tree" not in config:
        raise FormatError(f"{os.fsdecode(path)}: header config lacks the field 'tree'")
    return decode(config["tree"], arrays, path)


def encode(obj, arrays):
    """The JSON tree of the nested structure `obj` (what `save` takes), adding its arrays to
    the dict `arrays` under fresh names ("arr_<n>"); for writers that keep such a structure
    inside their own config, e.g. an optimizer's state_dict."""
    return _encode(obj, "obj", arrays, set())


def decode(tree, arrays, path):
    """The structure `encode` described, from the arrays `read` returned."""
    return _decode(tree, "obj", arrays, os.fsdecode(path))


# In the JSON tree, None, bool, int, str and finite floats stand for themselves; everything
# else is a one-key object naming its type, so every JSON object in the tree is such a tag.
def _encode(obj, where, arrays, active):
    if obj is None or type(obj) in (bool, int, str):
        return obj
    if type(obj) is float:
        return obj if math.isfinite(obj) else {"float": repr(obj)}
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in _DTYPE_KINDS:
            raise TypeError(f"{where} is an array of dtype {obj.dtype}; supported: bool, "
                            "integer, floating and complex dtypes")
        name = f"arr_{len(arrays)}"
        arrays[name] = obj
        return {"array" if isinstance(obj, np.ndarray) else "scalar": name}
    if not isinstance(obj, (dict, list, tuple)):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                        "save takes dicts, lists, tuples, numpy arrays, int, float, str, "
                        "bool and None")
    if id(obj) in active:
        raise ValueError(f"{where} contains itself")
    active.add(id(obj))
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; "
                                "save takes str and int keys")
            items.append([key, _encode(value, f"{where}[{key!r}]", arrays, active)])
        encoded = {"dict": items}
    else:
        tag = "tuple" if isinstance(obj, tuple) else "list"
        encoded = {tag: [_encode(v, f"{where}[{i}]", arrays, active)
                         for i, v in enumerate(obj)]}
    active.discard(id(obj))
    return encoded


def _decode(node, where, arrays, path):
    if node is None or type(node) in (bool, int, str, float):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (tag, value), = node.items()
        if tag == "dict" and isinstance(value, list) and all(
                isinstance(kv, list) and len(kv) == 2 and type(kv[0]) in (str, int)
                for kv in value):
            return {k: _decode(v, f"{where}[{k!r}]", arrays, path) for k, v in value}
        if tag in ("list", "tuple") and isinstance(value, list):
            items = [_decode(v, f"{where}[{i}]", arrays, path) for i, v in enumerate(value)]
            return items if tag == "list" else tuple(items)
        if tag in ("array", "scalar") and isinstance(value, str) and value in arrays:
            return arrays[value] if tag == "array" else arrays[value][()]
        if tag == "float" and value in ("nan", "inf", "-inf"):
            return float(value)
    raise FormatError(f"{path}: malformed entry at {where}: {node!r:.80}")
