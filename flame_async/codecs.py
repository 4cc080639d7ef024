"""Typed, self-describing, non-executable encodings for results.

The storage service keeps only bytes, so every intermediate object carries its own type: a short
header names the format, and the receiver decodes without being told and without pickle. Final
results are plain files (``.json``, ``.npy``, ``.parquet`` ...) that an analyst opens directly, so
they carry no header.

Formats, chosen from the value's type (:func:`detect_format`), with the final file each makes:

* ``json``: ``None``, bool, int, float, list, tuple and dict values (``.json``).
* ``fhir+json``: a dict with a str ``resourceType``, i.e. a FHIR resource or Bundle (``.json``).
* ``text``: ``str``, as UTF-8 (``.txt``).
* ``bytes``: ``bytes``, ``bytearray`` and ``memoryview``, raw (``.bin``).
* ``ndarray``: numpy arrays of any dtype but object, incl. big-endian, 0-d and empty (``.npy``).
* ``numpy-scalar``: numpy scalars such as ``np.float32(1)``, as a 0-d ``.npy``.
* ``dataframe`` and ``series``: pandas objects, as Parquet (``.parquet``, or ``.csv`` on request).
* ``ndarray-dict``: dicts, nested or not, of numeric numpy arrays (``.safetensors``).
* ``tensor`` and ``tensor-dict``: a torch tensor, or dicts of them (``.safetensors``).
* ``pickle``: anything else, only with ``allow_pickle=True`` (``.pkl``).

Choices worth knowing:

* **NaN and infinity in JSON values are kept.** orjson would write them as ``null``, so when a JSON
  value holds a non-finite float (or an int outside the 64-bit range orjson supports), it is written
  with Python's :mod:`json` instead, using the ``NaN``, ``Infinity`` and ``-Infinity`` tokens that
  Python's ``json`` module (and JSON5) reads. The intermediate header marks such payloads
  (``{"extended_json": true}``) so the receiver parses them with :mod:`json`; every other JSON
  payload is strict JSON written by orjson. Final ``.json`` files follow the same rule, so a final
  file holds these tokens only when the value has non-finite floats.
* JSON has no tuples: tuples decode as lists. numpy bool/int/float scalars inside JSON values decode
  as Python numbers. Dict keys must be ``str``.
* JSON values nest at most 250 levels (deeper usually means a cycle): a deeper value is refused
  like one without a JSON form. A value or payload too deep for the call stack (Python's
  ``json`` recurses) raises :class:`~flame_async.errors.CodecError`, never ``RecursionError``.
* Pickles are recognised by their opcodes, never run to find out: a payload without the header
  that is a raw pickle of any protocol (0 to 5) raises
  :class:`~flame_async.errors.PickleNotAllowed` unless pickle was allowed.
* Dicts of arrays or tensors are stored with safetensors. Nested dicts are flattened to ``a.b.c``
  tensor names and the nesting is recorded in the safetensors metadata
  (``flame_async.structure``), so they decode to the same nested dicts, in the same order.
  Big-endian arrays are stored little-endian and come back big-endian. Decoded torch tensors are
  on the CPU, detached; a tensor that shared memory with another decodes as its own copy.
* An :class:`numpy.ndarray` subclass (e.g. ``np.matrix``) decodes as a plain ``ndarray``.

Intermediate header (:func:`encode`), all integers big-endian::

    b"FLAMEASYNC"                 10 bytes of magic
    version                       1 byte, currently 1
    len(format)                   1 byte
    format                        ASCII format name, e.g. b"ndarray"
    len(metadata)                 4 bytes
    metadata                      a JSON object, right-padded with spaces so that the payload
                                  starts at a multiple of 64 bytes
    payload                       the format's bytes (the same bytes :func:`encode_final` writes,
                                  except JSON, which is compact here)

Memory: the encoders avoid copies. :func:`encode` of a C- or Fortran-contiguous array returns the
array's own memory as a payload part, and :func:`decode` returns arrays that are views over the
received buffer (``np.frombuffer``): read-only when the buffer is ``bytes``, and sharing (and
pinning) the buffer when it is a ``bytearray`` or writable ``memoryview``. Call ``.copy()`` for an
independent array. Likewise, encoding a ``bytearray`` references it until the parts are written.

Heavy libraries (numpy, pandas, pyarrow, torch, safetensors) are imported only when a value or
payload needs them; type detection looks at ``sys.modules`` and never imports them. The functions
hold no global state, so they can run in worker threads (``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

import importlib
import io
import json
import math
import pickle
import pickletools
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import orjson

from flame_async.errors import CodecError, InvalidArgument, MissingExtra, PickleNotAllowed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    import numpy.typing as npt

__all__ = [
    "FINAL_EXTENSIONS",
    "FORMATS",
    "MAGIC",
    "Encoded",
    "decode",
    "decode_final",
    "detect_format",
    "encode",
    "encode_final",
    "encode_flamesdk_pickle",
]

MAGIC: Final = b"FLAMEASYNC"
"""The bytes every intermediate object written by :func:`encode` starts with."""

_VERSION: Final = 1
_ALIGN: Final = 64

_JSON: Final = "json"
_FHIR: Final = "fhir+json"
_TEXT: Final = "text"
_BYTES: Final = "bytes"
_NDARRAY: Final = "ndarray"
_NUMPY_SCALAR: Final = "numpy-scalar"
_DATAFRAME: Final = "dataframe"
_SERIES: Final = "series"
_NDARRAY_DICT: Final = "ndarray-dict"
_TENSOR: Final = "tensor"
_TENSOR_DICT: Final = "tensor-dict"
_PICKLE: Final = "pickle"

FORMATS: Final = (
    _JSON,
    _FHIR,
    _TEXT,
    _BYTES,
    _NDARRAY,
    _NUMPY_SCALAR,
    _DATAFRAME,
    _SERIES,
    _NDARRAY_DICT,
    _TENSOR,
    _TENSOR_DICT,
    _PICKLE,
)
"""Every format name :func:`detect_format` can return and an intermediate header can carry."""

FINAL_EXTENSIONS: Final = (
    ".json",
    ".txt",
    ".bin",
    ".npy",
    ".parquet",
    ".csv",
    ".safetensors",
    ".pkl",
)
"""Every extension :func:`encode_final` can produce and :func:`decode_final` reads."""

_INTERMEDIATE_MEDIA_TYPE: Final = "application/octet-stream"
_INTERMEDIATE_EXTENSION: Final = ".flame"
_OCTET_STREAM: Final = "application/octet-stream"

_MAX_DEPTH: Final = 250  # orjson refuses more than 255 levels; deeper usually means a cycle
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1

# Array kinds a .npy file holds without pickle: bool, ints, floats, complex, timedelta, datetime,
# bytes, str and structured records (object fields are excluded separately).
_NPY_KINDS: Final = frozenset("biufcmMSUV")

# safetensors dtype names by numpy (kind, itemsize); safetensors data is always little-endian.
_SAFETENSORS_NUMPY: Final[Mapping[tuple[str, int], str]] = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
    ("c", 8): "C64",
}
_NUMPY_FROM_SAFETENSORS: Final[Mapping[str, str]] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
    "C64": "<c8",
}
# torch dtype attribute names (some only exist in newer torch) to safetensors dtype names.
_SAFETENSORS_TORCH: Final[Mapping[str, str]] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
_ST_FRAMEWORK: Final = "flame_async.framework"
_ST_STRUCTURE: Final = "flame_async.structure"
_ST_BIG_ENDIAN: Final = "flame_async.big_endian"
_ST_RESERVED: Final = "__metadata__"
_SINGLE_TENSOR_NAME: Final = "tensor"

_MEDIA_TYPES: Final[Mapping[str, str]] = {
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".bin": _OCTET_STREAM,
    ".npy": "application/x-npy",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv; charset=utf-8",
    ".safetensors": _OCTET_STREAM,
    ".pkl": _OCTET_STREAM,
}
_FINAL_EXTENSION: Final[Mapping[str, str]] = {
    _JSON: ".json",
    _FHIR: ".json",
    _TEXT: ".txt",
    _BYTES: ".bin",
    _NDARRAY: ".npy",
    _NUMPY_SCALAR: ".npy",
    _NDARRAY_DICT: ".safetensors",
    _TENSOR: ".safetensors",
    _TENSOR_DICT: ".safetensors",
    _PICKLE: ".pkl",
}

_SUPPORTED_TYPES: Final = (
    "None, bool, int, float, str, lists and dicts of those (JSON), bytes, numpy arrays and "
    "scalars, pandas DataFrame or Series, torch tensors, or dicts of numpy arrays or of torch "
    "tensors"
)

Part: TypeAlias = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded value, ready to upload.

    Attributes:
        format: The format name (one of :data:`FORMATS`).
        parts: The bytes to write, in order. For :func:`encode` the first part is the header. Parts
            may be views of the encoded value's memory (no copy), so the value must not be changed
            until the parts are written.
        size: The total number of bytes in ``parts``.
        media_type: The media type to upload the bytes with.
        extension: The file extension, with its dot (``.flame`` for intermediate objects).
    """

    format: str
    parts: tuple[Part, ...]
    size: int
    media_type: str
    extension: str

    def to_bytes(self) -> bytes:
        """Join the parts into one ``bytes`` object (a copy; meant for small values and tests).

        Returns:
            The encoded bytes.
        """
        return b"".join(self.parts)


class _Unsupported(Exception):
    """Raised inside this module when a value has no safe encoding; becomes a CodecError."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.path: list[str] = []


# ------------------------------------------------------------------------------------ public API


def detect_format(value: object, *, allow_pickle: bool = False) -> str:
    """Choose the format for a value from its type, without importing any heavy library.

    Args:
        value: The value to encode.
        allow_pickle: Return ``"pickle"`` for values that have no safe format instead of raising.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        PickleNotAllowed: The value has no safe format (an arbitrary object, a set, an object-dtype
            array, ...) and ``allow_pickle`` is false. The message says how to convert it.
        CodecError: The value is nested too deeply for the call stack.
    """
    return _choose(value, allow_pickle=allow_pickle)[0]


def encode(value: object, *, allow_pickle: bool = False) -> Encoded:
    """Encode a value as a self-describing intermediate object.

    The result starts with a header naming the format, so :func:`decode` restores the value
    without being told its type. Array payloads reference the array's memory instead of copying
    it (see the module docs).

    Args:
        value: The value to encode.
        allow_pickle: Pickle values that have no safe format. Only for peers that trust each
            other: unpickling runs code chosen by the sender.

    Returns:
        The encoded value; ``extension`` is ``.flame``.

    Raises:
        PickleNotAllowed: The value has no safe format and ``allow_pickle`` is false.
        CodecError: The value cannot be encoded at all (e.g. text with lone surrogates, a value
            nested too deeply for the call stack, or pickling failed).
        MissingExtra: A library needed for the value is not installed.
    """
    fmt, parts, meta = _encode_body(value, allow_pickle=allow_pickle, final=False)
    return _encoded(
        fmt, (_header(fmt, meta), *parts), _INTERMEDIATE_MEDIA_TYPE, _INTERMEDIATE_EXTENSION
    )


def encode_final(
    value: object,
    *,
    allow_pickle: bool = False,
    table_format: Literal["parquet", "csv"] = "parquet",
) -> Encoded:
    """Encode a final result as a plain file an analyst opens directly (no header).

    The file is ``.json`` (JSON values and FHIR resources), ``.txt`` (str), ``.bin`` (bytes),
    ``.npy`` (arrays and numpy scalars, readable with ``np.load(allow_pickle=False)``),
    ``.parquet`` or ``.csv`` (DataFrames and Series), ``.safetensors`` (tensors and dicts of
    arrays or tensors) or, with ``allow_pickle``, ``.pkl``. A Series becomes a one-column table;
    the CSV includes the index unless it is the default ``0..n-1`` range.

    Args:
        value: The value to encode.
        allow_pickle: Pickle values that have no safe format.
        table_format: ``"parquet"`` (keeps dtypes, index, categoricals and time zones) or
            ``"csv"`` (plain text) for DataFrames and Series; ignored for other values.

    Returns:
        The encoded file; ``extension`` and ``media_type`` describe it.

    Raises:
        InvalidArgument: ``table_format`` is neither ``"parquet"`` nor ``"csv"``.
        PickleNotAllowed: The value has no safe format and ``allow_pickle`` is false.
        CodecError: The value cannot be encoded at all (see :func:`encode`).
        MissingExtra: A library needed for the value is not installed.
    """
    if table_format not in ("parquet", "csv"):
        raise InvalidArgument(f"table_format must be 'parquet' or 'csv', not {table_format!r}")
    fmt, parts, _ = _encode_body(
        value, allow_pickle=allow_pickle, final=True, table_format=table_format
    )
    extension = f".{table_format}" if fmt in (_DATAFRAME, _SERIES) else _FINAL_EXTENSION[fmt]
    media_type = "application/fhir+json" if fmt == _FHIR else _MEDIA_TYPES[extension]
    return _encoded(fmt, tuple(parts), media_type, extension)


def encode_flamesdk_pickle(value: object) -> Encoded:
    """Encode a value the way flamesdk 0.6 stores intermediate data: a raw pickle stream.

    Only for receivers that run flamesdk (they unpickle whatever they download and cannot
    read the typed format); flame-async receivers refuse it unless they allow pickle.

    Returns:
        The pickle stream (no header); ``format`` is ``pickle``, ``extension`` ``.pkl``.

    Raises:
        CodecError: Pickling failed.
    """
    try:
        payload = pickle.dumps(value)
    except Exception as exc:  # any pickling failure is the value's
        raise CodecError(f"cannot pickle a {type(value).__name__} for flamesdk: {exc}") from exc
    return _encoded(_PICKLE, (payload,), "application/octet-stream", ".pkl")


def decode(data: bytes | bytearray | memoryview, *, allow_pickle: bool = False) -> Any:
    """Decode an intermediate object written by :func:`encode`.

    Arrays are returned as views over ``data`` where possible (no copy): read-only for ``bytes``,
    sharing the buffer for a ``bytearray``. A payload without the flame-async header is refused,
    unless it is a raw pickle stream of any protocol, 0 to 5 (what the old ``flamesdk`` stores),
    and ``allow_pickle`` is true.

    Args:
        data: The stored bytes.
        allow_pickle: Unpickle pickled payloads. Only for senders you trust: unpickling runs code
            chosen by the sender.

    Returns:
        The decoded value.

    Raises:
        PickleNotAllowed: The payload is pickled (with or without the header) and
            ``allow_pickle`` is false. Nothing is unpickled.
        CodecError: The payload is not a flame-async object, is truncated or malformed (also:
            nested too deeply to decode), or names a format this version does not know.
        MissingExtra: A library needed for the format is not installed.
    """
    buf = _byte_view(data)
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        protocol = _raw_pickle_protocol(buf)
        if protocol is not None:
            if not allow_pickle:
                raise PickleNotAllowed(
                    f"the payload is a raw pickle stream (protocol {protocol}) without the "
                    "flame-async header: the sender used pickle, as the old flamesdk does. "
                    "Unpickling runs code chosen by the sender, so it is refused; if you trust "
                    "the sender, decode with allow_pickle=True"
                )
            return _unpickle(buf)
        raise CodecError(
            f"not a flame-async object: expected it to start with {MAGIC!r}, "
            f"found {bytes(buf[:16])!r} ({len(buf)} bytes)"
        )
    fmt, meta, start = _parse_header(buf)
    payload = buf[start:]
    if fmt == _PICKLE:
        if not allow_pickle:
            raise PickleNotAllowed(
                "the payload was pickled by its sender (encode(..., allow_pickle=True)); "
                "unpickling runs code chosen by the sender, so it is refused. If you trust the "
                "sender, decode with allow_pickle=True"
            )
        return _unpickle(payload)
    if fmt not in FORMATS:
        raise CodecError(
            f"unknown format {fmt!r} in the header; it was written by a newer flame-async, "
            "upgrade this node"
        )
    return _decode_body(fmt, payload, meta)


def decode_final(
    data: bytes | bytearray | memoryview, extension: str, *, allow_pickle: bool = False
) -> Any:
    """Decode a final result file written by :func:`encode_final` (or any file of that kind).

    ``.json`` decodes to JSON values (a FHIR resource to a dict), ``.txt`` to ``str``, ``.bin`` to
    ``bytes``, ``.npy`` to an array (a numpy scalar comes back as a 0-d array), ``.parquet`` and
    ``.csv`` to a DataFrame (a Series comes back as a one-column DataFrame; CSV keeps no dtypes),
    ``.safetensors`` to a tensor or (nested) dict of tensors or numpy arrays.

    Args:
        data: The file's bytes.
        extension: The file extension, with or without the dot (case-insensitive).
        allow_pickle: Unpickle ``.pkl`` files. Only for files you trust.

    Returns:
        The decoded value.

    Raises:
        InvalidArgument: The extension is not one of :data:`FINAL_EXTENSIONS`.
        PickleNotAllowed: The file is a pickle and ``allow_pickle`` is false.
        CodecError: The bytes are not a valid file of that kind (also: JSON nested too deeply
            to decode).
        MissingExtra: A library needed for the format is not installed.
    """
    ext = extension.lower()
    if not ext.startswith("."):
        ext = f".{ext}"
    if ext == ".pkl" and not allow_pickle:
        raise PickleNotAllowed(
            "the file is a pickle; unpickling runs code chosen by whoever wrote it, so it is "
            "refused. If you trust it, decode with allow_pickle=True"
        )
    readers: dict[str, Callable[[memoryview], Any]] = {
        ".json": lambda buf: _load_json(buf, extended=True),
        ".txt": _decode_text,
        ".bin": bytes,
        ".npy": _read_npy,
        ".parquet": _read_parquet,
        ".csv": _read_csv,
        ".safetensors": lambda buf: _read_safetensors(buf, {}),
        ".pkl": _unpickle,
    }
    reader = readers.get(ext)
    if reader is None:
        raise InvalidArgument(
            f"unknown final result extension {extension!r}; expected one of "
            f"{', '.join(FINAL_EXTENSIONS)}"
        )
    return reader(_byte_view(data))


# -------------------------------------------------------------------------------- classification


def _loaded(name: str) -> Any:
    """Return a module if it is already imported, else None (never imports it)."""
    return sys.modules.get(name)


def _type_name(value: object) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _choose(value: object, *, allow_pickle: bool) -> tuple[str, bool]:
    """Return the format and, for JSON formats, whether the extended JSON writer is needed.

    Raises:
        PickleNotAllowed: No safe format, and ``allow_pickle`` is false.
        CodecError: The value is nested too deeply for the call stack.
    """
    try:
        return _classify(value)
    except _Unsupported as exc:
        if allow_pickle:
            return _PICKLE, False
        raise _refusal(exc) from None
    except RecursionError as exc:
        raise _too_deep("encode") from exc


def _too_deep(what: str) -> CodecError:
    return CodecError(
        f"cannot {what} this value: it is nested too deeply for Python's call stack (flame-async "
        f"writes at most {_MAX_DEPTH} levels); flatten the structure"
    )


def _classify(value: object) -> tuple[str, bool]:
    fmt = _classify_library_value(value)  # first: np.str_ and np.float64 subclass str and float
    if fmt is not None:
        return fmt, False
    if isinstance(value, str):
        return _TEXT, False
    if isinstance(value, bytes | bytearray | memoryview):
        return _BYTES, False
    if isinstance(value, dict):
        return _classify_dict(value)
    if value is None or isinstance(value, bool | int | float | list | tuple):
        return _JSON, _scan_json(value)
    raise _Unsupported(f"it is a {_type_name(value)}", _hint_for(value))


def _classify_library_value(value: object) -> str | None:
    """Classify numpy, pandas and torch values, looking only at libraries already imported."""
    np = _loaded("numpy")
    if np is not None and isinstance(value, np.ndarray | np.generic):
        if _is_masked(value):
            raise _Unsupported(
                "it is a numpy masked array",
                "send value.filled(...), or the data and the mask as two arrays",
            )
        _check_npy_dtype(value.dtype, f"this numpy {type(value).__name__}")
        return _NDARRAY if isinstance(value, np.ndarray) else _NUMPY_SCALAR
    pd = _loaded("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        return _DATAFRAME
    if pd is not None and isinstance(value, pd.Series):
        return _SERIES
    torch = _loaded("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        _check_tensor(value, torch, "this tensor")
        return _TENSOR
    return None


def _hint_for(value: object) -> str:
    if isinstance(value, set | frozenset):
        return "convert the set to a list, e.g. sorted(value)"
    if hasattr(value, "model_dump"):
        return "convert the model to a dict with value.model_dump(mode='json')"
    if hasattr(value, "__dataclass_fields__"):
        return "convert the dataclass to a dict with dataclasses.asdict(value)"
    if hasattr(value, "isoformat"):
        return "convert it to a string with value.isoformat()"
    module = type(value).__module__.partition(".")[0]
    if module in ("numpy", "torch"):
        return "a dict whose values are all arrays (or all tensors) is supported, or .tolist()"
    return f"convert it to one of: {_SUPPORTED_TYPES}"


def _refusal(exc: _Unsupported) -> PickleNotAllowed:
    where = f" at value{''.join(exc.path)}" if exc.path else ""
    hint = exc.hint or f"convert it to one of: {_SUPPORTED_TYPES}"
    return PickleNotAllowed(
        f"cannot encode this value without pickle{where}: {exc.reason}. To fix it, {hint}; or, "
        "if sender and receiver trust each other, pass allow_pickle=True"
    )


def _scan_json(value: object) -> bool:
    """Check that a value is JSON-able; return whether it needs the extended (stdlib) writer.

    Iterative, so that how deep the caller's stack already is does not matter.

    Raises:
        _Unsupported: Something in the value has no JSON form, or it is nested more than
            ``_MAX_DEPTH`` levels deep; ``path`` says where.
    """
    extended = False
    path: list[str] = []  # where ``item`` is: one label per open container
    open_containers: list[Iterator[tuple[str, object]]] = []
    item = value
    while True:
        try:
            if isinstance(item, list | tuple | dict):
                open_containers.append(_json_children(item, len(open_containers)))
                path.append("")
            else:
                extended |= _scan_json_leaf(item)
        except _Unsupported as exc:
            exc.path = [label for label in path if label]
            raise
        while open_containers:
            child = next(open_containers[-1], None)
            if child is not None:
                path[-1], item = child
                break
            open_containers.pop()
            path.pop()
        else:
            return extended


def _json_children(
    container: list[Any] | tuple[Any, ...] | dict[Any, Any], depth: int
) -> Iterator[tuple[str, object]]:
    """The items of a JSON container at ``depth`` with their path labels (dict keys are
    checked first).

    Raises:
        _Unsupported: The container is nested ``_MAX_DEPTH`` levels deep, or a dict key is not
            a str.
    """
    if depth >= _MAX_DEPTH:
        raise _Unsupported(
            f"it is nested more than {_MAX_DEPTH} levels deep (or contains itself)",
            "flatten the structure",
        )
    if isinstance(container, dict):
        for key in container:
            _check_json_key(key)
        return ((f"[{key!r}]", item) for key, item in container.items())
    return ((f"[{index}]", item) for index, item in enumerate(container))


def _scan_json_leaf(value: object) -> bool:
    if value is None or isinstance(value, bool | str):
        return False
    if isinstance(value, int):
        return not _INT_MIN <= value <= _INT_MAX
    if isinstance(value, float):
        return not math.isfinite(value)
    np = _loaded("numpy")
    if np is not None and isinstance(value, np.generic):
        kind, itemsize = value.dtype.kind, value.dtype.itemsize
        if kind in "biu" or (kind == "f" and itemsize <= 8):
            return kind == "f" and not math.isfinite(float(value))
    raise _Unsupported(f"it holds a {_type_name(value)}, which JSON cannot hold", _hint_for(value))


def _check_json_key(key: object) -> None:
    if not isinstance(key, str):
        raise _Unsupported(
            f"a dict key is a {_type_name(key)} ({key!r}), but JSON keys are str",
            "convert the keys to str",
        )


def _classify_dict(value: dict[Any, Any]) -> tuple[str, bool]:
    if isinstance(value.get("resourceType"), str):
        return _FHIR, _scan_json(value)
    kind = _tree_kind(value)
    if kind is None:
        return _JSON, _scan_json(value)
    torch = _loaded("torch")
    for path, leaf in _tree_leaves(value, ()):
        what = "value" + "".join(f"[{key!r}]" for key in path)
        if kind == _TENSOR_DICT:
            _check_tensor(leaf, torch, what)
        else:
            if _is_masked(leaf):
                raise _Unsupported(
                    f"{what} is a masked array", "send the data and the mask as two arrays"
                )
            if (leaf.dtype.kind, leaf.dtype.itemsize) not in _SAFETENSORS_NUMPY:
                raise _Unsupported(
                    f"{what} has dtype {leaf.dtype}, which safetensors cannot store (it holds "
                    "bool, int, uint, float and complex64 arrays)",
                    "send that array on its own (stored as .npy) or convert its dtype",
                )
    return kind, False


def _tree_kind(value: dict[Any, Any]) -> str | None:
    """Return the format if the dict is a (nested) dict of only arrays or only tensors."""
    np, torch = _loaded("numpy"), _loaded("torch")
    if np is None and torch is None:
        return None
    kinds: set[str] = set()

    def walk(node: dict[Any, Any], depth: int) -> bool:
        if depth >= _MAX_DEPTH:
            return False
        for key, item in node.items():
            if not isinstance(key, str):
                return False
            if isinstance(item, dict):
                if not walk(item, depth + 1):
                    return False
            elif torch is not None and isinstance(item, torch.Tensor):
                kinds.add(_TENSOR_DICT)
            elif np is not None and isinstance(item, np.ndarray):
                kinds.add(_NDARRAY_DICT)
            else:
                return False
        return True

    if not walk(value, 0) or not kinds:
        return None
    if len(kinds) > 1:
        raise _Unsupported(
            "the dict mixes torch tensors and numpy arrays",
            "convert the arrays with torch.from_numpy(...) or the tensors with .numpy()",
        )
    return kinds.pop()


def _tree_leaves(
    node: Mapping[str, Any], prefix: tuple[str, ...]
) -> list[tuple[tuple[str, ...], Any]]:
    leaves: list[tuple[tuple[str, ...], Any]] = []
    for key, item in node.items():
        if isinstance(item, dict):
            leaves.extend(_tree_leaves(item, (*prefix, key)))
        else:
            leaves.append(((*prefix, key), item))
    return leaves


def _is_masked(value: object) -> bool:
    return type(value).__module__.startswith("numpy.ma")


def _check_npy_dtype(dtype: Any, what: str) -> None:
    if dtype.hasobject or dtype.kind not in _NPY_KINDS:
        raise _Unsupported(
            f"{what} has dtype {dtype}, which needs pickle",
            "convert it to a numeric or str dtype first, e.g. arr.astype(float) or arr.astype(str)",
        )


def _check_tensor(value: Any, torch: Any, what: str) -> None:
    if value.layout != torch.strided:
        raise _Unsupported(f"{what} is a sparse tensor", "convert it with .to_dense()")
    if value.is_quantized or value.device.type == "meta":
        raise _Unsupported(
            f"{what} is a quantized or meta tensor", "dequantize it or materialise it first"
        )
    if _torch_dtype_name(value.dtype, torch) is None:
        raise _Unsupported(
            f"{what} has dtype {value.dtype}, which safetensors cannot store",
            "convert it to a float, int or bool dtype",
        )


def _torch_dtype_name(dtype: Any, torch: Any) -> str | None:
    for attribute, name in _SAFETENSORS_TORCH.items():
        if getattr(torch, attribute, None) == dtype:
            return name
    return None


# -------------------------------------------------------------------------------------- encoding


def _encode_body(
    value: object,
    *,
    allow_pickle: bool,
    final: bool,
    table_format: str = "parquet",
) -> tuple[str, list[Part], dict[str, Any]]:
    """Return the format, the payload parts and the header metadata for a value.

    Raises:
        PickleNotAllowed: No safe format, and ``allow_pickle`` is false.
        CodecError: The value cannot be written in its format (also: it is nested too deeply
            for the call stack).
        MissingExtra: A library the format needs is not installed.
    """
    fmt, extended = _choose(value, allow_pickle=allow_pickle)
    try:
        return _write_body(value, fmt, extended, final=final, table_format=table_format)
    except RecursionError as exc:
        raise _too_deep("encode") from exc


def _write_body(
    value: object, fmt: str, extended: bool, *, final: bool, table_format: str
) -> tuple[str, list[Part], dict[str, Any]]:
    meta: dict[str, Any] = {}
    parts: list[Part]
    if fmt in (_JSON, _FHIR):
        payload = _dump_json(value, extended=extended, pretty=final)
        if extended:
            meta["extended_json"] = True
        parts = [payload]
    elif fmt == _TEXT:
        parts = [_encode_text(value)]
    elif fmt == _BYTES:
        parts = [_byte_view(value)]  # type: ignore[arg-type]
    elif fmt in (_NDARRAY, _NUMPY_SCALAR):
        _require("numpy", "numpy")
        import numpy as np

        parts = _npy_parts(np.asarray(value))
    elif fmt in (_DATAFRAME, _SERIES):
        parts = _table_parts(value, fmt, meta, csv=final and table_format == "csv")
    elif fmt == _NDARRAY_DICT:
        parts = _numpy_safetensors_parts(value)  # type: ignore[arg-type]
    elif fmt in (_TENSOR, _TENSOR_DICT):
        parts = _torch_safetensors_parts(value)
    else:
        parts = [_pickle(value)]
    return fmt, parts, meta


def _encoded(fmt: str, parts: tuple[Part, ...], media_type: str, extension: str) -> Encoded:
    size = sum(len(part) for part in parts)  # all parts are flat byte views
    return Encoded(fmt, parts, size, media_type, extension)


def _header(fmt: str, meta: Mapping[str, Any]) -> bytes:
    name = fmt.encode("ascii")
    body = orjson.dumps(meta)
    prefix_len = len(MAGIC) + 2 + len(name) + 4
    body += b" " * (-(prefix_len + len(body)) % _ALIGN)
    return MAGIC + bytes((_VERSION, len(name))) + name + struct.pack(">I", len(body)) + body


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """Return a flat, unsigned-byte view of a buffer (copying only non-contiguous views)."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        return view.cast("B")
    return view


def _dump_json(value: object, *, extended: bool, pretty: bool) -> bytes:
    try:
        if not extended:
            option = orjson.OPT_SERIALIZE_NUMPY
            if pretty:
                option |= orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
            return orjson.dumps(value, option=option)
        text = json.dumps(
            value,
            ensure_ascii=False,
            allow_nan=True,
            default=_json_default,
            indent=2 if pretty else None,
            separators=(",", ": ") if pretty else (",", ":"),
        )
        return (text + "\n" if pretty else text).encode("utf-8")
    except (orjson.JSONEncodeError, UnicodeEncodeError, ValueError) as exc:
        raise CodecError(f"cannot encode this value as JSON: {exc}") from exc


def _json_default(value: Any) -> Any:
    # Only numpy bool/int/float scalars get here: _scan_json admitted nothing else.
    return value.item()


def _encode_text(value: Any) -> bytes:
    try:
        return str(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(
            f"the text cannot be encoded as UTF-8 ({exc.reason} at index {exc.start}); it holds "
            "lone surrogates, e.g. from decoding bytes with errors='surrogateescape'"
        ) from exc


def _npy_parts(arr: npt.NDArray[Any]) -> list[Part]:
    """Return the .npy header and the array's own memory (copied only if not contiguous)."""
    import numpy as np

    if arr.flags.c_contiguous:
        fortran, data = False, arr
    elif arr.flags.f_contiguous:
        # A transpose of a C-contiguous array: its transpose is C-contiguous, write it as is.
        fortran, data = True, arr.T
    else:
        fortran, data = False, np.ascontiguousarray(arr)
    header = {
        "descr": np.lib.format.dtype_to_descr(arr.dtype),
        "fortran_order": fortran,
        "shape": arr.shape,
    }
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # the header does not fit in 64 KiB (huge structured dtypes)
        out = io.BytesIO()
        try:
            np.lib.format.write_array_header_2_0(out, header)
        except ValueError as exc:
            raise CodecError(f"cannot write a .npy header for dtype {arr.dtype}: {exc}") from exc
    parts: list[Part] = [out.getvalue()]
    if data.nbytes:
        parts.append(data.reshape(-1).view(np.uint8).data)
    return parts


def _table_parts(value: Any, fmt: str, meta: dict[str, Any], *, csv: bool) -> list[Part]:
    _require("pandas", "pandas")
    import pandas as pd

    frame = value
    if fmt == _SERIES:
        if value.name is None:
            meta["unnamed"] = True
        frame = value.to_frame()
    if csv:
        index = frame.index
        default_index = (
            isinstance(index, pd.RangeIndex)
            and index.start == 0
            and index.step == 1
            and index.name is None
        )
        return [frame.to_csv(index=not default_index).encode("utf-8")]
    _require("pyarrow", "pandas")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = frame.columns
    for level in columns.levels if isinstance(columns, pd.MultiIndex) else [columns]:
        # pyarrow would only warn and write these names as strings; refuse instead.
        if "mixed" in pd.api.types.infer_dtype(level, skipna=True):
            raise CodecError(
                f"the column names of this {type(value).__name__} mix types ({list(level)!r}), "
                "which Parquet cannot keep; make them one type, e.g. "
                "df.columns = df.columns.astype(str)"
            )
    try:
        table = pa.Table.from_pandas(frame)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise CodecError(
            f"cannot store this {type(value).__name__} as Parquet: {exc}. Convert the offending "
            "columns (e.g. df[col].astype(str)), make column names unique, or send it with "
            "encode_final(..., table_format='csv')"
        ) from exc
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return [memoryview(sink.getvalue())]


def _flatten_tree(
    node: Mapping[str, Any], prefix: str, flat: dict[str, Any]
) -> dict[str, Any] | str:
    """Flatten nested dicts into ``flat`` (dotted names); return the structure to rebuild them."""
    structure: dict[str, Any] = {}
    for key, item in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(item, dict):
            structure[key] = _flatten_tree(item, path, flat)
            continue
        name, n = path, 1
        while name in flat or name == _ST_RESERVED:  # "a.b" can come from {"a.b"} or {"a": {"b"}}
            n += 1
            name = f"{path}#{n}"
        flat[name] = item
        structure[key] = name
    return structure


def _safetensors_parts(
    entries: list[tuple[str, str, tuple[int, ...], int, Part]], metadata: Mapping[str, str]
) -> list[Part]:
    """Lay out a safetensors file: u64 LE header length, JSON header, then the tensor bytes.

    Entries are (name, dtype, shape, itemsize, data). The data is placed largest itemsize first
    (stable), like the safetensors library does, so every tensor stays aligned.
    """
    header: dict[str, Any] = {_ST_RESERVED: dict(metadata)}
    parts: list[Part] = []
    offset = 0
    for name, dtype, shape, _, data in sorted(entries, key=lambda entry: -entry[3]):
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        if len(data):
            parts.append(data)
    raw = orjson.dumps(header)
    raw += b" " * (-len(raw) % 8)
    return [struct.pack("<Q", len(raw)) + raw, *parts]


def _numpy_safetensors_parts(value: Mapping[str, Any]) -> list[Part]:
    _require("numpy", "numpy")
    import numpy as np

    flat: dict[str, Any] = {}
    structure = _flatten_tree(value, "", flat)
    entries: list[tuple[str, str, tuple[int, ...], int, Part]] = []
    big_endian: list[str] = []
    for name, arr in flat.items():
        data = np.asarray(arr)
        if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and sys.byteorder == "big"):
            big_endian.append(name)
            data = data.astype(data.dtype.newbyteorder("<"))
        data = np.ascontiguousarray(data) if data.ndim else data
        dtype = _SAFETENSORS_NUMPY[data.dtype.kind, data.dtype.itemsize]
        view: Part = data.reshape(-1).view(np.uint8).data if data.nbytes else b""
        entries.append((name, dtype, data.shape, data.dtype.itemsize, view))
    metadata = {_ST_FRAMEWORK: "numpy", _ST_STRUCTURE: orjson.dumps(structure).decode()}
    if big_endian:
        metadata[_ST_BIG_ENDIAN] = orjson.dumps(big_endian).decode()
    return _safetensors_parts(entries, metadata)


def _torch_safetensors_parts(value: Any) -> list[Part]:
    _require("numpy", "torch")  # tensors are exposed as bytes through numpy
    import torch

    flat: dict[str, Any] = {}
    structure: dict[str, Any] | str
    if isinstance(value, torch.Tensor):
        flat[_SINGLE_TENSOR_NAME] = value
        structure = _SINGLE_TENSOR_NAME
    else:
        structure = _flatten_tree(value, "", flat)
    entries: list[tuple[str, str, tuple[int, ...], int, Part]] = []
    for name, tensor in flat.items():
        t = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
        dtype = _torch_dtype_name(t.dtype, torch)
        if dtype is None:  # _classify checked every leaf
            raise CodecError(f"unsupported tensor dtype {t.dtype}")
        # A uint8 view of the tensor's own memory; torch is little-endian on every platform it
        # supports, which is the byte order safetensors wants.
        data: Part = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""
        entries.append((name, dtype, tuple(t.shape), t.element_size(), data))
    metadata = {_ST_FRAMEWORK: "torch", _ST_STRUCTURE: orjson.dumps(structure).decode()}
    return _safetensors_parts(entries, metadata)


def _pickle(value: object) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
        raise CodecError(f"cannot pickle a {_type_name(value)}: {exc}") from exc


# -------------------------------------------------------------------------------------- decoding


def _require(module: str, extra: str) -> None:
    """Import an optional dependency, or raise MissingExtra naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra) from exc


def _parse_header(buf: memoryview) -> tuple[str, dict[str, Any], int]:
    at = len(MAGIC)
    try:
        version, name_len = buf[at], buf[at + 1]
        if version != _VERSION:
            raise CodecError(
                f"the object was written with header version {version}, this flame-async reads "
                f"version {_VERSION}; upgrade this node"
            )
        at += 2
        name = bytes(buf[at : at + name_len]).decode("ascii")
        at += name_len
        (meta_len,) = struct.unpack_from(">I", buf, at)
        at += 4
        if at + meta_len > len(buf):
            raise CodecError("the flame-async header is truncated")
        meta = orjson.loads(buf[at : at + meta_len])
    except (IndexError, struct.error, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise CodecError(f"the flame-async header is truncated or corrupt: {exc}") from exc
    if not isinstance(meta, dict):
        raise CodecError("the flame-async header metadata is not a JSON object")
    return name, meta, at + meta_len


def _raw_pickle_protocol(buf: memoryview) -> int | None:
    """The pickle protocol of a raw pickle stream, or None when ``buf`` is not one.

    Protocols 2-5 start with the PROTO opcode and the protocol number. Protocols 0 and 1 have
    no such mark: ``buf`` is one of those if its opcodes parse (read, never run) and its STOP
    opcode is its last byte.
    """
    if len(buf) >= 2 and buf[0] == 0x80 and 2 <= buf[1] <= 5:
        return buf[1]
    if len(buf) < 2 or buf[-1] != ord(pickle.STOP):
        return None
    protocol = 0
    try:
        for opcode, _, position in pickletools.genops(io.BytesIO(buf)):
            protocol = max(protocol, opcode.proto)
            if opcode.name == "STOP":
                return protocol if position == len(buf) - 1 and protocol <= 1 else None
    except (ValueError, struct.error):  # not a pickle opcode, or a malformed argument
        return None
    return None


def _unpickle(buf: memoryview) -> Any:
    try:
        return pickle.loads(buf)  # noqa: S301 - the caller opted in with allow_pickle=True
    except Exception as exc:  # unpickling can raise anything; report it uniformly
        raise CodecError(f"cannot unpickle the payload: {exc!r}") from exc


def _decode_body(fmt: str, payload: memoryview, meta: Mapping[str, Any]) -> Any:
    decoders: dict[str, Callable[[], Any]] = {
        _JSON: lambda: _load_json(payload, extended=bool(meta.get("extended_json"))),
        _TEXT: lambda: _decode_text(payload),
        _BYTES: lambda: bytes(payload),
        _NDARRAY: lambda: _read_npy(payload),
        _NUMPY_SCALAR: lambda: _read_npy(payload)[()],
        _DATAFRAME: lambda: _read_parquet(payload),
        _SERIES: lambda: _read_series(payload, meta),
        _NDARRAY_DICT: lambda: _read_safetensors(payload, {"framework": "numpy"}),
        _TENSOR: lambda: _read_safetensors(payload, {"framework": "torch"}),
        _TENSOR_DICT: lambda: _read_safetensors(payload, {"framework": "torch"}),
    }
    decoders[_FHIR] = decoders[_JSON]
    return decoders[fmt]()


def _load_json(buf: memoryview, *, extended: bool) -> Any:
    """The JSON value in ``buf`` (extended: read with Python's json, which takes NaN tokens).

    Raises:
        CodecError: Not valid JSON, or nested too deeply to read (orjson stops at 1024 levels,
            Python's json at the call stack's limit).
    """
    try:
        if extended:
            # Python's json reads NaN/Infinity tokens and arbitrarily large ints exactly.
            return json.loads(bytes(buf))
        return orjson.loads(buf)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise CodecError(f"the payload is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise CodecError(
            "the JSON payload is nested too deeply to decode (flame-async writes at most "
            f"{_MAX_DEPTH} levels); it was not written by flame-async's encode()"
        ) from exc


def _decode_text(buf: memoryview) -> str:
    try:
        return str(buf, "utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"the payload is not valid UTF-8 text: {exc}") from exc


def _read_npy(buf: memoryview) -> npt.NDArray[Any]:
    """Read a .npy payload as a view over ``buf`` (no copy), never unpickling anything."""
    _require("numpy", "numpy")
    import numpy as np

    if bytes(buf[:6]) != b"\x93NUMPY" or len(buf) < 10:
        raise CodecError(f"the payload is not a .npy array (starts with {bytes(buf[:8])!r})")
    major = buf[6]
    try:
        if major == 1:
            start = 10 + struct.unpack_from("<H", buf, 8)[0]
        else:
            start = 12 + struct.unpack_from("<I", buf, 8)[0]
        if start > len(buf):
            raise CodecError("the .npy header is truncated")
        head = io.BytesIO(bytes(buf[:start]))
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:  # 3.0 (utf-8 field names): let numpy read it, still without pickle
            array: npt.NDArray[Any] = np.load(io.BytesIO(bytes(buf)), allow_pickle=False)
            return array
    except (ValueError, struct.error) as exc:
        raise CodecError(f"the .npy payload is malformed or refused: {exc}") from exc
    if dtype.hasobject:
        raise CodecError(
            "the .npy payload holds an object-dtype array, which only pickle can load; refused"
        )
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(buf) - start != expected:
        raise CodecError(
            f"the .npy payload holds {len(buf) - start} data bytes, expected {expected} for "
            f"shape {shape} and dtype {dtype}"
        )
    if expected == 0:
        return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=start)
    if fortran:
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def _read_parquet(buf: memoryview) -> Any:
    _require("pandas", "pandas")
    _require("pyarrow", "pandas")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(buf))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CodecError(f"the payload is not a valid Parquet table: {exc}") from exc
    return table.to_pandas()


def _read_series(buf: memoryview, meta: Mapping[str, Any]) -> Any:
    frame = _read_parquet(buf)
    if len(frame.columns) != 1:
        raise CodecError(f"a Series payload must have one column, found {len(frame.columns)}")
    series = frame.iloc[:, 0]
    if meta.get("unnamed"):
        series.name = None
    return series


def _read_csv(buf: memoryview) -> Any:
    _require("pandas", "pandas")
    import pandas as pd

    try:
        return pd.read_csv(io.BytesIO(bytes(buf)))
    except (ValueError, pd.errors.ParserError) as exc:
        raise CodecError(f"the payload is not valid CSV: {exc}") from exc


def _read_safetensors(buf: memoryview, hint: Mapping[str, str]) -> Any:
    """Read a safetensors payload and rebuild the nesting recorded in its metadata."""
    try:
        (header_len,) = struct.unpack_from("<Q", buf, 0)
        if 8 + header_len > len(buf):
            raise CodecError("the safetensors header is truncated")
        header = orjson.loads(buf[8 : 8 + header_len])
    except (struct.error, orjson.JSONDecodeError) as exc:
        raise CodecError(f"the payload is not a valid safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError("the safetensors header is not a JSON object")
    metadata = header.pop(_ST_RESERVED, None) or {}
    framework = metadata.get(_ST_FRAMEWORK) or hint.get("framework", "numpy")
    if framework == "torch":
        tensors = _load_torch_safetensors(buf)
    else:
        tensors = _load_numpy_safetensors(buf[8 + header_len :], header)
        for name in orjson.loads(metadata.get(_ST_BIG_ENDIAN, "[]")):
            arr = tensors[name]
            tensors[name] = arr.astype(arr.dtype.newbyteorder(">"))
    raw_structure = metadata.get(_ST_STRUCTURE)
    if raw_structure is None:
        return tensors
    try:
        return _rebuild(orjson.loads(raw_structure), tensors, 0)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CodecError(f"the safetensors structure metadata is corrupt: {exc!r}") from exc


def _rebuild(structure: Any, tensors: Mapping[str, Any], depth: int) -> Any:
    if isinstance(structure, str):
        return tensors[structure]
    if not isinstance(structure, dict):
        raise TypeError(f"unexpected structure node {structure!r}")
    if depth >= _MAX_DEPTH:
        raise ValueError(f"the structure is nested more than {_MAX_DEPTH} levels deep")
    return {key: _rebuild(node, tensors, depth + 1) for key, node in structure.items()}


def _load_numpy_safetensors(data: memoryview, header: Mapping[str, Any]) -> dict[str, Any]:
    _require("numpy", "numpy")
    import numpy as np

    out: dict[str, Any] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_NUMPY_FROM_SAFETENSORS[info["dtype"]])
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except KeyError as exc:
            raise CodecError(
                f"safetensors entry {name!r} has no numpy equivalent or is malformed ({exc!r}); "
                "bfloat16 and float8 tensors need torch"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise CodecError(f"safetensors entry {name!r} is malformed: {exc}") from exc
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise CodecError(f"safetensors entry {name!r} has inconsistent data offsets")
        if count == 0:
            out[name] = np.empty(shape, dtype=dtype)
        else:
            out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
    return out


def _load_torch_safetensors(buf: memoryview) -> dict[str, Any]:
    _require("torch", "torch")
    _require("safetensors", "torch")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors: dict[str, Any] = load(bytes(buf))
    except (SafetensorError, ValueError, KeyError) as exc:
        raise CodecError(f"the payload is not a valid safetensors file: {exc}") from exc
    return tensors
