"""flame_async.codecs: typed, self-describing, non-executable encodings."""

from __future__ import annotations

import inspect
import io
import json
import math
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from flame_async import codecs
from flame_async.codecs import (
    FINAL_EXTENSIONS,
    FORMATS,
    MAGIC,
    Encoded,
    decode,
    decode_final,
    detect_format,
    encode,
    encode_final,
)
from flame_async.errors import CodecError, InvalidArgument, MissingExtra, PickleNotAllowed

# Why the optional-library tests skip; they run where the `test` and `test-torch` extras are
# installed (as in CI), everything else runs without torch and safetensors.
NO_TORCH = "torch is not importable: pip install -e '.[test-torch]' to test the tensor codecs"
NO_SAFETENSORS = "safetensors is not importable: pip install -e '.[test]' to check its files"


def roundtrip(value: object, **kwargs: Any) -> Any:
    return decode(encode(value, **kwargs).to_bytes(), **kwargs)


def final_roundtrip(value: object, **kwargs: Any) -> Any:
    encoded = encode_final(value, **kwargs)
    allow_pickle = kwargs.get("allow_pickle", False)
    return decode_final(encoded.to_bytes(), encoded.extension, allow_pickle=allow_pickle)


def header_meta(encoded: Encoded) -> dict[str, Any]:
    header = bytes(encoded.parts[0])
    name_len = header[len(MAGIC) + 1]
    at = len(MAGIC) + 2 + name_len
    (meta_len,) = struct.unpack_from(">I", header, at)
    meta: dict[str, Any] = orjson.loads(header[at + 4 : at + 4 + meta_len])
    return meta


def payload_parts(encoded: Encoded) -> tuple[bytes | memoryview, ...]:
    return encoded.parts[1:]


class Evil:
    """Unpickling this creates a file: a stand-in for code execution, without a shell."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.path,))


@dataclass
class Point:
    x: int
    y: int


# ------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**64 - 1,
        2**200,
        -(2**100),
        1.5,
        -0.0,
        1e308,
        [],
        {},
        [1, "two", 3.0, None, True, [[]], {"k": {"n": [1, 2]}}],
        {"ünïcödé 😀": "value\x00with NUL", "nested": {"list": [1, 2, {"x": None}]}},
    ],
)
def test_json_values_round_trip_exactly(value: object) -> None:
    assert detect_format(value) == "json"
    result = roundtrip(value)
    assert result == value
    assert type(result) is type(value)
    assert final_roundtrip(value) == value


def test_json_distinguishes_int_and_float() -> None:
    result = roundtrip({"i": 1, "f": 1.0})
    assert type(result["i"]) is int
    assert type(result["f"]) is float


@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
def test_json_keeps_nan_and_infinity_in_intermediate_objects(special: float) -> None:
    value = {"mean": special, "values": [1.0, special, 2.0], "n": 3}
    encoded = encode(value)
    assert header_meta(encoded) == {"extended_json": True}
    result = decode(encoded.to_bytes())
    assert result["n"] == 3
    for got in (result["mean"], result["values"][1]):
        assert math.isnan(got) if math.isnan(special) else got == special


def test_json_final_file_with_nan_uses_tokens_python_json_reads() -> None:
    encoded = encode_final({"mean": math.nan, "max": math.inf, "min": -math.inf})
    text = encoded.to_bytes().decode()
    assert "NaN" in text
    assert "Infinity" in text
    loaded = json.loads(text)
    assert math.isnan(loaded["mean"])
    assert loaded["max"] == math.inf
    assert loaded["min"] == -math.inf
    again = decode_final(encoded.to_bytes(), ".json")
    assert math.isnan(again["mean"])


def test_json_without_special_floats_is_strict_json() -> None:
    encoded = encode({"a": [1.5, 2]})
    assert header_meta(encoded) == {}
    assert orjson.loads(b"".join(bytes(p) for p in payload_parts(encoded))) == {"a": [1.5, 2]}
    final = encode_final({"a": [1.5, 2]})
    assert orjson.loads(final.to_bytes()) == {"a": [1.5, 2]}


def test_json_tuples_decode_as_lists() -> None:
    assert roundtrip((1, (2, 3))) == [1, [2, 3]]


def test_numpy_scalars_inside_json_decode_as_python_numbers() -> None:
    value = {"mean": np.float64(1.5), "n": np.int64(7), "ok": np.bool_(True), "f": np.float32(0.5)}
    assert detect_format(value) == "json"
    assert roundtrip(value) == {"mean": 1.5, "n": 7, "ok": True, "f": 0.5}
    nan_result = roundtrip({"x": np.float32(np.nan)})
    assert math.isnan(nan_result["x"])


def test_json_dict_with_non_str_keys_is_refused_with_the_location() -> None:
    with pytest.raises(CodecError, match=r"value\['a'\].*key is a int"):
        encode({"a": {1: "x"}})


def test_self_referencing_list_is_refused() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(CodecError, match="levels deep"):
        encode(value)


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def with_stack_left(headroom: int, call: Any) -> Any:
    """Run ``call()`` with only about ``headroom`` frames left before the recursion limit."""

    def descend(n: int) -> Any:
        return call() if n <= 0 else descend(n - 1)

    return descend(sys.getrecursionlimit() - len(inspect.stack(context=0)) - headroom)


@pytest.mark.parametrize("extended", [False, True])
def test_json_nested_to_the_limit_encodes_whatever_the_callers_stack(extended: bool) -> None:
    value = nested(249, math.nan if extended else 1)  # the deepest value encode() takes
    for call in (encode, encode_final):
        # the check of the value does not recurse: it fits where its levels would not
        assert with_stack_left(400, lambda: call(value)).size > 0  # noqa: B023
    assert json.dumps(roundtrip(value)) == json.dumps(value)


def test_json_too_deep_for_the_callers_stack_raises_codec_error_not_recursion_error() -> None:
    value = nested(249, math.nan)  # extended JSON: written by Python's json, which recurses
    assert with_stack_left(60, lambda: detect_format(value)) == "json"  # the check: iterative
    for call in (encode, encode_final):
        with pytest.raises(CodecError, match="nested too deeply"):
            with_stack_left(60, lambda: call(value))  # noqa: B023


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_payload_is_a_codec_error_on_decode(depth: int) -> None:
    deep = b"[" * depth + b"NaN" + b"]" * depth
    extended = _handmade_header("json", b'{"extended_json": true}') + deep
    with pytest.raises(CodecError, match="nested too deeply"):
        decode(extended)
    with pytest.raises(CodecError, match="nested too deeply"):
        decode_final(deep, ".json")
    strict = b"[" * depth + b"1" + b"]" * depth
    with pytest.raises(CodecError, match="not valid JSON"):
        decode(_handmade_header("json") + strict)


# ---------------------------------------------------------------------------------- text, bytes


@pytest.mark.parametrize(
    "text", ["", "plain", "ünïcödé 😀🇩🇪", "with\x00NUL\x00bytes", "a" * 100_000]
)
def test_text_round_trips(text: str) -> None:
    encoded = encode(text)
    assert encoded.format == "text"
    assert roundtrip(text) == text
    final = encode_final(text)
    assert final.extension == ".txt"
    assert final.to_bytes() == text.encode("utf-8")
    assert final_roundtrip(text) == text


def test_text_with_lone_surrogate_is_refused() -> None:
    with pytest.raises(CodecError, match="surrogate"):
        encode("bad \udcff")


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00\xff raw", bytearray(b"mutable"), memoryview(b"view"), memoryview(b"abcdef")[::2]],
)
def test_bytes_like_values_decode_as_bytes(value: bytes | bytearray | memoryview) -> None:
    expected = bytes(value)
    assert detect_format(value) == "bytes"
    result = roundtrip(value)
    assert type(result) is bytes
    assert result == expected
    final = encode_final(value)
    assert final.extension == ".bin"
    assert final.to_bytes() == expected


def test_bytes_payload_is_not_copied() -> None:
    value = bytearray(1024)
    (part,) = payload_parts(encode(value))
    assert isinstance(part, memoryview)
    assert part.obj is value


# ---------------------------------------------------------------------------------- numpy arrays

_BASE = np.arange(24, dtype=np.float64).reshape(4, 6)
ARRAYS: dict[str, np.ndarray[Any, Any]] = {
    "1-d": np.arange(10, dtype=np.int32),
    "empty": np.array([], dtype=np.float32),
    "empty-2d": np.zeros((0, 3), dtype=np.int16),
    "0-d": np.array(3.5),
    "0-d-int": np.array(7, dtype=np.uint8),
    "step-slice": np.arange(20)[::3],
    "2d-step-slice": _BASE[::2, ::3],
    "negative-step": np.arange(10)[::-1],
    "transpose": _BASE.T,
    "3d-transpose": np.arange(60).reshape(3, 4, 5).transpose(1, 0, 2),
    "big-endian": np.arange(6, dtype=">f8").reshape(2, 3),
    "big-endian-int-transpose": np.arange(6, dtype=">i4").reshape(2, 3).T,
    "nan-inf": np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]),
    "bool": np.array([[True, False], [False, True]]),
    "complex": np.array([1 + 2j, np.nan + 1j], dtype=np.complex64),
    "float16": np.linspace(0, 1, 5, dtype=np.float16),
    "datetime": np.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[m]"),
    "timedelta": np.array([1, 2], dtype="timedelta64[s]"),
    "unicode": np.array(["a", "ünï", "😀"]),
    "bytes": np.array([b"x", b"yz"]),
    "structured": np.array(
        [(1, (0.5, 1.5)), (2, (2.5, 3.5))], dtype=[("id", "<i4"), ("xy", ">f8", (2,))]
    ),
}


@pytest.mark.parametrize("arr", ARRAYS.values(), ids=ARRAYS.keys())
def test_arrays_round_trip_with_dtype_and_shape(arr: np.ndarray[Any, Any]) -> None:
    for result in (roundtrip(arr), final_roundtrip(arr)):
        assert isinstance(result, np.ndarray)
        assert result.dtype == arr.dtype
        assert result.dtype.str == arr.dtype.str  # byte order too
        assert result.shape == arr.shape
        np.testing.assert_array_equal(result, arr)


def test_encode_does_not_copy_a_large_contiguous_array() -> None:
    arr = np.random.default_rng(0).random((1024, 1024))  # 8 MiB
    encoded = encode(arr)
    assert encoded.size < arr.nbytes + 256
    (npy_header, part) = payload_parts(encoded)
    assert bytes(npy_header).startswith(b"\x93NUMPY")
    assert isinstance(part, memoryview)
    assert np.shares_memory(np.frombuffer(part, dtype=np.uint8), arr)


def test_encode_does_not_copy_a_fortran_ordered_array() -> None:
    arr = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000).T
    (header, part) = encode_final(arr).parts
    assert b"'fortran_order': True" in bytes(header)
    assert np.shares_memory(np.frombuffer(part, dtype=np.uint8), arr)


def test_payload_after_the_header_is_64_byte_aligned() -> None:
    header = bytes(encode(np.zeros(3)).parts[0])
    assert len(header) % 64 == 0


def test_decode_of_bytes_returns_a_read_only_view() -> None:
    data = encode(np.arange(1000)).to_bytes()
    result = decode(data)
    assert not result.flags.writeable
    assert np.shares_memory(result, np.frombuffer(data, dtype=np.uint8))


def test_decode_of_a_bytearray_shares_its_memory() -> None:
    buffer = bytearray(encode(np.zeros(100)).to_bytes())
    result = decode(buffer)
    assert result.flags.writeable
    assert np.shares_memory(result, np.frombuffer(buffer, dtype=np.uint8))


def test_object_dtype_array_is_refused_with_conversion_advice() -> None:
    arr = np.array([1, "a", None], dtype=object)
    with pytest.raises(CodecError, match=r"dtype object.*astype\(float\).*allow_pickle=True"):
        encode(arr)
    with pytest.raises(CodecError, match="astype"):
        encode_final(arr)
    result = roundtrip(arr, allow_pickle=True)
    assert result.tolist() == [1, "a", None]


def test_masked_array_is_refused() -> None:
    with pytest.raises(CodecError, match="masked"):
        encode(np.ma.masked_array([1, 2], mask=[False, True]))


def test_truncated_array_payload_is_refused() -> None:
    data = encode(np.arange(100)).to_bytes()
    with pytest.raises(CodecError, match="data bytes"):
        decode(data[:-8])


def test_object_npy_is_refused_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickle, "loads", _forbidden)
    monkeypatch.setattr(pickle, "load", _forbidden)
    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodecError, match="object"):
        decode_final(out.getvalue(), ".npy")
    crafted = _handmade_header("ndarray") + out.getvalue()
    with pytest.raises(CodecError, match="object"):
        decode(crafted)


@pytest.mark.parametrize(
    "scalar",
    [
        np.float32(1.25),
        np.float64(np.nan),
        np.int8(-3),
        np.uint64(2**64 - 1),
        np.bool_(True),
        np.complex128(1 - 1j),
        np.str_("ünï"),
        np.datetime64("2024-05-01"),
    ],
)
def test_numpy_scalars_round_trip_with_their_dtype(scalar: np.generic) -> None:
    assert detect_format(scalar) == "numpy-scalar"
    result = roundtrip(scalar)
    assert type(result) is type(scalar)
    assert result.dtype == scalar.dtype
    np.testing.assert_array_equal(result, scalar)
    final = encode_final(scalar)
    assert final.extension == ".npy"
    loaded = np.load(io.BytesIO(final.to_bytes()), allow_pickle=False)
    assert loaded.shape == ()
    assert loaded.dtype == scalar.dtype


# ------------------------------------------------------------------------------------- pandas


def rich_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "category": pd.Categorical(["b", "a", None, "b"], categories=["b", "a"], ordered=True),
            "float": [1.5, np.nan, None, -np.inf],
            "int": pd.array([1, None, 3, 4], dtype="Int64"),
            "text": ["x", None, "ünïcödé 😀", ""],
            "when": pd.to_datetime(
                ["2024-01-01 10:00", None, "2024-03-31 03:30", "2024-10-27 02:30"]
            ).tz_localize("Europe/Berlin", ambiguous=[True, True, True, False]),
            "utc": pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC"),
            "flag": [True, False, True, False],
        },
        index=pd.Index(["r1", "r2", "r3", "r4"], name="record"),
    )


def test_dataframe_round_trips_categoricals_nulls_timezones_index() -> None:
    frame = rich_frame()
    assert detect_format(frame) == "dataframe"
    pd.testing.assert_frame_equal(roundtrip(frame), frame)
    pd.testing.assert_frame_equal(final_roundtrip(frame), frame)


def test_dataframe_with_int_column_names_round_trips() -> None:
    frame = pd.DataFrame({0: [1, 2], 7: [3.5, 4.5]})
    pd.testing.assert_frame_equal(roundtrip(frame), frame)


def test_dataframe_with_mixed_type_column_names_is_refused() -> None:
    with pytest.raises(CodecError, match=r"mix types.*astype\(str\)"):
        encode(pd.DataFrame({"a": [1], 7: [2]}))


def test_dataframe_multiindex_and_range_index_round_trip() -> None:
    index = pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["site", "n"])
    frame = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=index)
    pd.testing.assert_frame_equal(roundtrip(frame), frame)
    ranged = pd.DataFrame({"v": [1, 2]}, index=pd.RangeIndex(10, 14, 2))
    pd.testing.assert_frame_equal(roundtrip(ranged), ranged)


@pytest.mark.parametrize("name", ["counts", None, 0, ("a", "b")])
def test_series_round_trips_with_its_name(name: Any) -> None:
    series = pd.Series(
        [1.0, None, 3.0], name=name, index=pd.Index([10, 20, 30], name="key"), dtype="float64"
    )
    assert detect_format(series) == "series"
    result = roundtrip(series)
    pd.testing.assert_series_equal(result, series)
    assert result.name == name


def test_categorical_series_round_trips() -> None:
    series = pd.Series(pd.Categorical(["x", "y", None]), name="c")
    pd.testing.assert_series_equal(roundtrip(series), series)


def test_dataframe_parquet_fails_with_an_actionable_error() -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(CodecError, match=r"Parquet.*unique"):
        encode(frame)


def test_final_parquet_loads_with_pandas() -> None:
    frame = rich_frame()
    encoded = encode_final(frame)
    assert encoded.extension == ".parquet"
    assert encoded.media_type == "application/vnd.apache.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(encoded.to_bytes())), frame)


def test_final_csv_keeps_a_meaningful_index_only() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=pd.Index(["r1", "r2"], name="id"))
    encoded = encode_final(frame, table_format="csv")
    assert encoded.extension == ".csv"
    assert encoded.media_type.startswith("text/csv")
    assert encoded.to_bytes().decode().splitlines() == ["id,a,b", "r1,1,x", "r2,2,y"]
    plain = pd.DataFrame({"a": [1, 2]})
    result = decode_final(encode_final(plain, table_format="csv").to_bytes(), "csv")
    pd.testing.assert_frame_equal(result, plain)
    series_csv = encode_final(pd.Series([1, 2], name="n"), table_format="csv")
    assert series_csv.to_bytes().decode().splitlines() == ["n", "1", "2"]


def test_invalid_table_format_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="table_format"):
        encode_final(pd.DataFrame(), table_format="xlsx")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- safetensors


def assert_tree_equal(got: Any, expected: Any) -> None:
    assert isinstance(got, dict) == isinstance(expected, dict)
    if isinstance(expected, dict):
        assert list(got) == list(expected)  # same keys, same order
        for key in expected:
            assert_tree_equal(got[key], expected[key])
        return
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype.str == expected.dtype.str
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        return
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert torch.equal(got, expected.detach())


def array_tree() -> dict[str, Any]:
    return {
        "weights": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layer": {
            "bias": np.array([np.nan, np.inf, -1.0]),
            "steps": np.arange(10, dtype=np.int64)[::2],
            "mask": np.array([True, False]),
            "deeper": {"big_endian": np.arange(4, dtype=">i4"), "scalar": np.array(5.0)},
            "empty": np.zeros((0, 2), dtype=np.uint8),
        },
        "transposed": np.arange(6, dtype=np.float64).reshape(2, 3).T,
        "complex": np.array([1 + 1j], dtype=np.complex64),
    }


def test_nested_dict_of_numpy_arrays_round_trips() -> None:
    tree = array_tree()
    assert detect_format(tree) == "ndarray-dict"
    assert_tree_equal(roundtrip(tree), tree)
    assert_tree_equal(final_roundtrip(tree), tree)


def test_dict_of_numpy_arrays_final_file_loads_with_safetensors() -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason=NO_SAFETENSORS)
    tree = array_tree()
    encoded = encode_final(tree)
    assert encoded.extension == ".safetensors"
    flat = safetensors_numpy.load(encoded.to_bytes())
    assert set(flat) == {
        "weights",
        "layer.bias",
        "layer.steps",
        "layer.mask",
        "layer.deeper.big_endian",
        "layer.deeper.scalar",
        "layer.empty",
        "transposed",
        "complex",
    }
    np.testing.assert_array_equal(flat["layer.deeper.big_endian"], np.arange(4))
    np.testing.assert_array_equal(flat["transposed"], tree["transposed"])


def test_safetensors_written_by_the_library_decode_as_a_flat_dict() -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason=NO_SAFETENSORS)
    tensors = {"a": np.arange(3, dtype=np.float32), "b.c": np.ones((2, 2), dtype=np.int8)}
    result = decode_final(safetensors_numpy.save(tensors), ".safetensors")
    assert set(result) == {"a", "b.c"}
    for key, arr in tensors.items():
        np.testing.assert_array_equal(result[key], arr)


def test_dict_of_arrays_payload_is_not_copied() -> None:
    arr = np.ones((512, 512), dtype=np.float32)
    encoded = encode({"w": arr})
    assert any(
        np.shares_memory(np.frombuffer(part, dtype=np.uint8), arr)
        for part in payload_parts(encoded)
    )


def test_colliding_flattened_names_keep_both_values() -> None:
    tree = {"a.b": np.array([1]), "a": {"b": np.array([2])}, "__metadata__": np.array([3])}
    assert_tree_equal(roundtrip(tree), tree)


def test_safetensors_structure_nested_too_deep_is_a_codec_error() -> None:
    structure: object = "x"
    for _ in range(900):  # within orjson's 1024 levels, beyond what encode() ever writes
        structure = {"a": structure}
    header = orjson.dumps(
        {
            "__metadata__": {"flame_async.structure": json.dumps(structure)},
            "x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
        }
    )
    payload = struct.pack("<Q", len(header)) + header + bytes(8)
    with pytest.raises(CodecError, match="structure metadata is corrupt"):
        decode(_handmade_header("ndarray-dict") + payload)


def test_dict_of_unsupported_array_dtype_is_refused_with_the_location() -> None:
    with pytest.raises(CodecError, match=r"value\['names'\].*safetensors cannot store"):
        encode({"x": np.zeros(2), "names": np.array(["a", "b"])})


def test_dict_mixing_arrays_and_plain_values_is_refused_with_advice() -> None:
    with pytest.raises(CodecError, match=r"value\['w'\].*numpy.ndarray.*all arrays"):
        encode({"n": 3, "w": np.zeros(2)})


def test_fhir_bundle_is_fhir_json_and_decodes_to_a_dict() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {
                    "resourceType": "Observation",
                    "valueQuantity": {"value": 4.2, "unit": "mmol/L"},
                    "subject": {"display": "Jürgen 😀"},
                },
            }
        ],
    }
    assert detect_format(bundle) == "fhir+json"
    assert roundtrip(bundle) == bundle
    final = encode_final(bundle)
    assert final.extension == ".json"
    assert final.media_type == "application/fhir+json"
    assert json.loads(final.to_bytes()) == bundle


def test_resource_type_must_be_a_string_to_count_as_fhir() -> None:
    assert detect_format({"resourceType": 3}) == "json"


# ------------------------------------------------------------------------------------- torch


@pytest.fixture
def torch() -> Any:
    """The torch module; the test is skipped, saying why, where torch is not importable."""
    return pytest.importorskip("torch", reason=NO_TORCH)


def test_torch_tensors_round_trip(torch: Any) -> None:
    tensors = [
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
        torch.arange(12, dtype=torch.float32).reshape(3, 4).T,  # non-contiguous
        torch.tensor(2.5, dtype=torch.float64),  # 0-d
        torch.zeros((0, 4), dtype=torch.int16),
        torch.tensor([1.0, float("nan"), float("inf")], dtype=torch.bfloat16),
        torch.tensor([True, False]),
        torch.tensor([1 + 2j], dtype=torch.complex64),
        torch.ones(3, requires_grad=True),
    ]
    for tensor in tensors:
        assert detect_format(tensor) == "tensor"
        for result in (roundtrip(tensor), final_roundtrip(tensor)):
            assert result.dtype == tensor.dtype
            assert result.shape == tensor.shape
            assert torch.equal(result.nan_to_num(), tensor.detach().nan_to_num())


def test_nested_dict_of_torch_tensors_round_trips(torch: Any) -> None:
    shared = torch.arange(6, dtype=torch.float32)
    tree = {
        "encoder": {
            "layer0": {"weight": torch.randn(4, 3), "bias": torch.zeros(4)},
            "layer1": {"weight": torch.randn(2, 4).T, "scale": torch.tensor(0.5)},
        },
        "embedding": shared,
        "tied": shared[2:],  # shares memory with "embedding"
        "head.weight": torch.ones(2, dtype=torch.float16),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
        "half": torch.ones(2, dtype=torch.bfloat16),
    }
    assert detect_format(tree) == "tensor-dict"
    assert_tree_equal(roundtrip(tree), tree)
    assert_tree_equal(final_roundtrip(tree), tree)


def test_torch_final_file_loads_with_safetensors(torch: Any) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch", reason=NO_SAFETENSORS)
    tree = {"a": {"b": torch.ones(2, 2)}, "c": torch.arange(3)}
    encoded = encode_final(tree)
    assert encoded.extension == ".safetensors"
    flat = safetensors_torch.load(encoded.to_bytes())
    assert set(flat) == {"a.b", "c"}
    assert torch.equal(flat["a.b"], torch.ones(2, 2))


def test_torch_tensor_payload_is_not_copied(torch: Any) -> None:
    tensor = torch.ones(256, 256)
    parts = payload_parts(encode(tensor))
    assert any(
        np.shares_memory(np.frombuffer(part, dtype=np.uint8), tensor.numpy()) for part in parts
    )


def test_dict_mixing_tensors_and_arrays_is_refused(torch: Any) -> None:
    with pytest.raises(CodecError, match="mixes torch tensors and numpy arrays"):
        encode({"t": torch.zeros(1), "a": np.zeros(1)})


def test_sparse_tensor_is_refused(torch: Any) -> None:
    with pytest.raises(CodecError, match="to_dense"):
        encode(torch.zeros(3, 3).to_sparse())


# ------------------------------------------------------------------------- refusals and pickle


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (Point(1, 2), r"dataclasses\.asdict"),
        ({1, 2, 3}, r"sorted\(value\)"),
        (object(), "convert it to one of"),
        ({"a": [1, {"b": object()}]}, r"value\['a'\]\[1\]\['b'\]"),
        (pd.Timestamp("2024-01-01"), "isoformat"),
    ],
)
def test_unsupported_values_are_refused_with_an_actionable_message(
    value: object, hint: str
) -> None:
    for call in (encode, encode_final, detect_format):
        with pytest.raises(PickleNotAllowed, match=hint) as info:
            call(value)
        assert "allow_pickle=True" in str(info.value)
        assert isinstance(info.value, CodecError)


def test_pickle_needs_opt_in_on_encode_and_decode() -> None:
    value = Point(1, 2)
    assert detect_format(value, allow_pickle=True) == "pickle"
    encoded = encode(value, allow_pickle=True)
    assert encoded.format == "pickle"
    with pytest.raises(PickleNotAllowed, match="allow_pickle=True"):
        decode(encoded.to_bytes())
    assert decode(encoded.to_bytes(), allow_pickle=True) == value


def test_pickle_final_file_needs_opt_in() -> None:
    encoded = encode_final({1, 2}, allow_pickle=True)
    assert encoded.extension == ".pkl"
    with pytest.raises(PickleNotAllowed):
        decode_final(encoded.to_bytes(), ".pkl")
    assert decode_final(encoded.to_bytes(), ".pkl", allow_pickle=True) == {1, 2}


def test_supported_values_never_use_pickle_even_with_opt_in() -> None:
    assert encode(np.zeros(2), allow_pickle=True).format == "ndarray"
    assert encode({"a": 1}, allow_pickle=True).format == "json"


def _forbidden(*args: object, **kwargs: object) -> Any:
    raise AssertionError("an unpickler was called")


def test_crafted_pickle_is_never_unpickled_without_opt_in(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pwned"
    raw = pickle.dumps(Evil(target))
    with_header = encode(Evil(target), allow_pickle=True).to_bytes()
    assert not target.exists()

    with monkeypatch.context() as patched:
        patched.setattr(pickle, "loads", _forbidden)
        patched.setattr(pickle, "load", _forbidden)
        patched.setattr(pickle, "Unpickler", _forbidden)
        for payload in (raw, with_header, bytearray(raw), memoryview(with_header)):
            with pytest.raises(PickleNotAllowed):
                decode(payload)
        with pytest.raises(PickleNotAllowed):
            decode_final(raw, ".pkl")
    assert not target.exists()

    # The payload is live: with the opt-in it does what it says.
    decode(raw, allow_pickle=True)
    assert target.exists()
    target.unlink()
    decode(with_header, allow_pickle=True)
    assert target.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_raw_pickle_from_flamesdk_is_detected(protocol: int) -> None:
    data = pickle.dumps({"weights": [1, 2], "name": "w\u00e9"}, protocol=protocol)
    with pytest.raises(PickleNotAllowed, match=rf"protocol {protocol}\).*flamesdk.*allow_pickle"):
        decode(data)
    assert decode(data, allow_pickle=True) == {"weights": [1, 2], "name": "w\u00e9"}


@pytest.mark.parametrize("protocol", [0, 1])
def test_crafted_pickle_of_protocol_0_or_1_is_never_unpickled_without_opt_in(
    protocol: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pwned"
    raw = pickle.dumps(Evil(target), protocol=protocol)
    assert raw[:1] != b"\x80"  # no PROTO opcode to recognise it by
    with monkeypatch.context() as patched:
        patched.setattr(pickle, "loads", _forbidden)
        patched.setattr(pickle, "Unpickler", _forbidden)
        for payload in (raw, bytearray(raw), memoryview(raw)):
            with pytest.raises(PickleNotAllowed):
                decode(payload)
    assert not target.exists()
    decode(raw, allow_pickle=True)  # the payload is live: with the opt-in it does what it says
    assert target.exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"hello world.",
        b"(not a pickle.",
        b"N.trailing",
        b"\x80\x09not pickle",
        b'{"a": 1}',
    ],
)
def test_bytes_without_the_header_are_refused_naming_what_was_seen(data: bytes) -> None:
    with pytest.raises(CodecError, match="not a flame-async object") as info:
        decode(data)
    assert repr(data[:16]) in str(info.value)
    assert not isinstance(info.value, PickleNotAllowed)


# ------------------------------------------------------------------------------------ header


def _handmade_header(fmt: str, meta: bytes = b"{}", version: int = 1) -> bytes:
    name = fmt.encode()
    return MAGIC + bytes((version, len(name))) + name + struct.pack(">I", len(meta)) + meta


def test_header_layout_is_magic_version_format_and_metadata() -> None:
    header = bytes(encode([1]).parts[0])
    assert header.startswith(b"FLAMEASYNC\x01\x04json")
    (meta_len,) = struct.unpack_from(">I", header, 16)
    assert 20 + meta_len == len(header)
    assert orjson.loads(header[20:]) == {}
    # A header built by hand, without padding, decodes too.
    assert decode(_handmade_header("text") + "grüß".encode()) == "grüß"
    assert decode(_handmade_header("json", b'{"extended_json":true}') + b"[NaN]")[0] != 0


def test_unknown_format_and_newer_version_are_refused() -> None:
    with pytest.raises(CodecError, match="unknown format 'hdf5'"):
        decode(_handmade_header("hdf5") + b"...")
    with pytest.raises(CodecError, match="header version 2"):
        decode(_handmade_header("json", version=2) + b"1")


@pytest.mark.parametrize("cut", [11, 14, 18, 21])
def test_truncated_header_is_refused(cut: int) -> None:
    data = _handmade_header("json", b'{"extended_json": true}') + b"1"
    with pytest.raises(CodecError, match="header"):
        decode(data[:cut])


def test_corrupt_payloads_raise_codec_errors() -> None:
    for fmt, payload in [
        ("json", b"{not json"),
        ("text", b"\xff\xfe"),
        ("ndarray", b"not npy"),
        ("dataframe", b"not parquet"),
        ("ndarray-dict", b"\x05"),
    ]:
        with pytest.raises(CodecError):
            decode(_handmade_header(fmt) + payload)


# ------------------------------------------------------------------------------- final files


@pytest.mark.parametrize(
    ("value", "extension", "media_type"),
    [
        ({"a": 1}, ".json", "application/json"),
        ([1, 2], ".json", "application/json"),
        (3.5, ".json", "application/json"),
        ("text", ".txt", "text/plain; charset=utf-8"),
        (b"raw", ".bin", "application/octet-stream"),
        (np.zeros(3), ".npy", "application/x-npy"),
        (np.float32(1), ".npy", "application/x-npy"),
        (pd.DataFrame({"a": [1]}), ".parquet", "application/vnd.apache.parquet"),
        (pd.Series([1]), ".parquet", "application/vnd.apache.parquet"),
        ({"w": np.zeros(2)}, ".safetensors", "application/octet-stream"),
    ],
)
def test_final_extension_and_media_type(value: object, extension: str, media_type: str) -> None:
    encoded = encode_final(value)
    assert encoded.extension == extension
    assert encoded.media_type == media_type
    assert extension in FINAL_EXTENSIONS
    assert not encoded.to_bytes().startswith(MAGIC)


def test_final_npy_loads_with_numpy_without_pickle() -> None:
    for arr in ARRAYS.values():
        loaded = np.load(io.BytesIO(encode_final(arr).to_bytes()), allow_pickle=False)
        assert loaded.dtype.str == arr.dtype.str
        np.testing.assert_array_equal(loaded, arr)


def test_final_json_loads_with_json() -> None:
    value = {"counts": [1, 2, 3], "name": "ünï 😀", "ok": True, "none": None}
    assert json.loads(encode_final(value).to_bytes()) == value


def test_decode_final_rejects_unknown_extensions() -> None:
    with pytest.raises(InvalidArgument, match=r"\.xlsx"):
        decode_final(b"", ".xlsx")


def test_decode_final_accepts_extension_without_dot_in_any_case() -> None:
    assert decode_final(b'{"a": 1}', "JSON") == {"a": 1}


# ------------------------------------------------------------------------------------- misc


def test_encoded_size_matches_the_parts_and_is_frozen() -> None:
    encoded = encode(np.arange(10))
    assert encoded.size == len(encoded.to_bytes())
    assert encoded.media_type == "application/octet-stream"
    assert encoded.extension == ".flame"
    with pytest.raises(FrozenInstanceError):
        encoded.size = 0  # type: ignore[misc]


def test_every_detected_format_is_listed() -> None:
    values: list[object] = [1, "s", b"b", np.zeros(1), np.int8(1), pd.DataFrame(), pd.Series()]
    values += [{"w": np.zeros(1)}, {"resourceType": "Patient"}]
    detected = {detect_format(v) for v in values} | {detect_format(object(), allow_pickle=True)}
    assert detected <= set(FORMATS)


def test_public_names_are_sorted() -> None:
    assert codecs.__all__ == sorted(codecs.__all__, key=lambda n: (not n.isupper(), n))


def test_missing_extra_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    frame_payload = encode(pd.DataFrame({"a": [1]})).to_bytes()
    array_payload = encode(np.zeros(2)).to_bytes()
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtra) as info:
        decode(frame_payload)
    assert (info.value.package, info.value.extra) == ("pyarrow", "pandas")
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(MissingExtra) as info:
        decode(array_payload)
    assert (info.value.package, info.value.extra) == ("numpy", "numpy")


def test_detection_and_plain_values_do_not_import_heavy_libraries() -> None:
    script = textwrap.dedent(
        """
        import sys
        HEAVY = ("numpy", "pandas", "pyarrow", "torch", "safetensors")
        import flame_async
        before = {m for m in HEAVY if m in sys.modules}
        from flame_async import codecs
        for value in [None, 1, 2.5, float("nan"), "x", b"y", [1, {"a": 2}], {"resourceType": "P"}]:
            codecs.detect_format(value)
            codecs.decode(codecs.encode(value).to_bytes())
            codecs.encode_final(value)
        try:
            codecs.encode(object())
        except codecs.CodecError:
            pass
        after = {m for m in HEAVY if m in sys.modules}
        assert after == before, sorted(after - before)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=60)
