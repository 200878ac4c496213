"""Checks an ONNX file must pass before any ONNX reader (onnx, ONNX Runtime, OpenVINO) is given it.

stdlib only (the device runtime has no ``onnx`` package): the file is walked as protobuf wire format
(https://protobuf.dev/programming-guides/encoding/), following only the messages that can hold
tensors, and refused with one line when

* it is past protobuf's 2 GiB limit (weights that large must live in external data files),
* it is not a protobuf ``ModelProto`` with a graph (random bytes, a truncated file),
* a tensor's external data ``location`` is empty, absolute, has a ``..`` component, goes through a
  symbolic link, or resolves outside the model's folder; or the file it names is missing, not a
  regular file, or shorter than ``offset + length``.

The external data files are only ``stat``-ed here, never opened: a hostile model cannot make us
read ``/etc/shadow`` or ``~/.ssh`` into a tensor (CVE-2022-25882, CVE-2024-27318 in onnx; current
onnx, ONNX Runtime and OpenVINO refuse these too, but older ones did not, and our own check gives
the same one-line error everywhere). :func:`check_graph` adds the structural check (every node
input defined before use, which also rules out cycles) for callers that have an ``onnx.ModelProto``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgefpn.errors import ModelFileError

__all__ = [
    "PROTOBUF_LIMIT",
    "check_graph",
    "check_onnx_file",
    "external_data_entries",
    "io_shapes",
    "save_onnx",
]

PROTOBUF_LIMIT = (1 << 31) - 1  # bytes; protobuf refuses to parse or serialise a larger message

# Field numbers from onnx/onnx.proto3 (stable since IR version 3). Only length-delimited fields that
# lead to a TensorProto are followed; everything else is skipped by its wire type.
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs; a deeper file is hostile, not a model


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message; value is an int or (start, end) of the bytes."""
    pos = start
    value: Any  # an int, (start, end) or None, by wire type
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:  # 3/4 (groups) never appear in ONNX; 6/7 do not exist
            raise _Malformed(f"wire type {wire} at byte {pos}")
        if pos > end:
            raise _Malformed(f"field {number} runs past the end of its message (byte {end})")
        yield number, wire, value


def _sub(fields: Iterator[tuple[int, int, Any]], wanted: set[int]) -> Iterator[tuple[int, tuple[int, int]]]:
    for number, wire, value in fields:
        if number in wanted and wire == 2:
            yield number, value


def _tensor(buf: memoryview, span: tuple[int, int]) -> tuple[str, dict[str, str], bool]:
    name, entries, external = "", {}, False
    for number, wire, value in _fields(buf, *span):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = val = ""
            for n, w, v in _fields(buf, *value):
                if w == 2 and n in (1, 2):
                    text = bytes(buf[v[0] : v[1]]).decode("utf-8", "replace")
                    key, val = (text, val) if n == 1 else (key, text)
            entries[key] = val
    return name, entries, external or bool(entries)


def _walk_graph(buf: memoryview, span: tuple[int, int], depth: int) -> Iterator[tuple[str, dict[str, str]]]:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for number, value in _sub(
        _fields(buf, *span), {_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER}
    ):
        if number == _GRAPH_INITIALIZER:
            yield from _external(buf, value)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _walk_sparse(buf, value)
        else:
            yield from _walk_node(buf, value, depth)


def _walk_node(buf: memoryview, span: tuple[int, int], depth: int) -> Iterator[tuple[str, dict[str, str]]]:
    for _, attr in _sub(_fields(buf, *span), {_NODE_ATTRIBUTE}):
        for number, value in _sub(
            _fields(buf, *attr), {_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES}
        ):
            if number in (_ATTR_T, _ATTR_TENSORS):
                yield from _external(buf, value)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _walk_sparse(buf, value)
            else:
                yield from _walk_graph(buf, value, depth + 1)


def _walk_sparse(buf: memoryview, span: tuple[int, int]) -> Iterator[tuple[str, dict[str, str]]]:
    for _, value in _sub(_fields(buf, *span), {_SPARSE_VALUES, _SPARSE_INDICES}):
        yield from _external(buf, value)


def _external(buf: memoryview, span: tuple[int, int]) -> Iterator[tuple[str, dict[str, str]]]:
    name, entries, external = _tensor(buf, span)
    if external:
        yield name, entries


def external_data_entries(data: bytes | memoryview) -> list[tuple[str, dict[str, str]]]:
    """(tensor name, external_data key/values) of every tensor stored outside a serialised ModelProto.

    Raises:
        ValueError: ``data`` is not a protobuf ModelProto with a graph.
    """
    buf = memoryview(data)
    out: list[tuple[str, dict[str, str]]] = []
    has_graph = False
    try:
        for number, wire, value in _fields(buf, 0, len(buf)):
            if wire != 2:
                continue
            if number == _MODEL_GRAPH:
                has_graph = True
                out += _walk_graph(buf, value, 0)
            elif number == _MODEL_TRAINING_INFO:
                for _, g in _sub(_fields(buf, *value), set(_TRAINING_GRAPHS)):
                    out += _walk_graph(buf, g, 1)
            elif number == _MODEL_FUNCTIONS:
                for _, node in _sub(_fields(buf, *value), {_FUNCTION_NODE}):
                    out += _walk_node(buf, node, 1)
    except _Malformed as exc:
        raise ValueError(f"not a protobuf ONNX model ({exc})") from None
    if not has_graph:
        raise ValueError("not an ONNX model (no graph)")
    return out


_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = (
    1,
    2,
    1,
    2,
    1,
    1,
    2,
)


def _value_shape(buf: memoryview, span: tuple[int, int]) -> tuple[str, tuple[int | str, ...]]:
    name, dims = "", []
    for number, wire, value in _fields(buf, *span):
        if number == _VALUE_NAME and wire == 2:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == _VALUE_TYPE and wire == 2:
            for _, tensor in _sub(_fields(buf, *value), {_TYPE_TENSOR}):
                for _, shape in _sub(_fields(buf, *tensor), {_TENSOR_SHAPE}):
                    for _, dim in _sub(_fields(buf, *shape), {_SHAPE_DIM}):
                        d: int | str = "?"
                        for n, w, v in _fields(buf, *dim):
                            if n == _DIM_VALUE and w == 0:
                                d = v
                            elif n == _DIM_PARAM and w == 2:
                                d = bytes(buf[v[0] : v[1]]).decode("utf-8", "replace")
                        dims.append(d)
    return name, tuple(dims)


def io_shapes(data: bytes | memoryview) -> dict[str, tuple[int | str, ...]]:
    """The graph's declared input and output shapes (a str for a named or unknown dimension), read from
    the serialised bytes without the ``onnx`` package (the device runtime checks a bundled engine's
    input size against its pipeline before extracting anything).

    Raises:
        ValueError: ``data`` is not a protobuf ModelProto with a graph.
    """
    buf = memoryview(data)
    out: dict[str, tuple[int | str, ...]] = {}
    try:
        graphs = [g for _, g in _sub(_fields(buf, 0, len(buf)), {_MODEL_GRAPH})]
        if not graphs:
            raise ValueError("not an ONNX model (no graph)")
        for _, value in _sub(_fields(buf, *graphs[-1]), {_GRAPH_INPUT, _GRAPH_OUTPUT}):
            name, dims = _value_shape(buf, value)
            out[name] = dims
    except _Malformed as exc:
        raise ValueError(f"not a protobuf ONNX model ({exc})") from None
    return out


def _location_problem(base: Path, entries: dict[str, str]) -> str | None:
    """Why the external data described by ``entries`` may not be read, or None. Only stats files."""
    location = entries.get("location", "")
    if not location or "\0" in location:
        return f"external data location {location!r} is empty or invalid"
    pure = PurePosixPath(location.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(location).drive or PureWindowsPath(location).root:
        return f"external data location {location!r} is an absolute path"
    if ".." in pure.parts:
        return f"external data location {location!r} has a '..' component"
    path = base
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            return f"external data location {location!r} goes through a symbolic link"
    if not path.resolve().is_relative_to(base.resolve()):
        return f"external data location {location!r} resolves outside the model's folder"
    if not path.is_file():
        return f"external data file {location!r} is missing or not a regular file"
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        return f"external data offset/length of {location!r} are not integers"
    size = path.stat().st_size
    if offset < 0 or (length is not None and (length < 0 or offset + length > size)):
        return f"external data {location!r} offset {offset} + length {length} is past its {size} bytes"
    return None


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """Refuse (``ModelFileError``, one line naming ``path``) an ONNX file that is unsafe or not ONNX.

    Reads ``path`` itself (after a size check) and stats the external data files it names; opens
    nothing else.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX file not found")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes), not an ONNX model")
    if size > PROTOBUF_LIMIT:
        raise ModelFileError(
            f"{path}: {size} bytes, past protobuf's 2 GiB limit for one ONNX file; "
            "a model this large must keep its weights in external data files"
        )
    try:
        entries = external_data_entries(path.read_bytes())
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    for name, info in entries:
        problem = _location_problem(path.parent, info)
        if problem is not None:
            raise ModelFileError(f"{path}: tensor {name!r}: {problem}; refusing the model")


def check_graph(model: Any, path: str | os.PathLike[str]) -> None:
    """Refuse a graph where a node reads a tensor nothing defined before it (a dangling input or a cycle).

    ``model`` is an ``onnx.ModelProto``; subgraphs may also read the enclosing graphs' names.
    """

    def walk(graph: Any, outer: set[str], where: str) -> None:
        known = set(outer) | {v.name for v in graph.input} | {t.name for t in graph.initializer}
        known |= {t.values.name for t in graph.sparse_initializer}
        produced_later = {o for n in graph.node for o in n.output}
        for node in graph.node:
            for name in node.input:
                if name and name not in known:
                    why = "a cycle or unsorted nodes" if name in produced_later else "a dangling input"
                    raise ModelFileError(
                        f"{path}: node {node.name or node.op_type!r} reads {name!r} before "
                        f"anything defines it ({why}){where}"
                    )
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    walk(g, known, f" in a subgraph of {node.name or node.op_type!r}")
            known.update(o for o in node.output if o)
        missing = [o.name for o in graph.output if o.name not in known]
        if missing:
            raise ModelFileError(f"{path}: graph output {missing[0]!r} is produced by no node{where}")

    if not model.HasField("graph"):
        raise ModelFileError(f"{path}: not an ONNX model (no graph)")
    walk(model.graph, set(), "")


def save_onnx(model: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model`` as ONE self-contained file: every tensor inline, never an external reference.

    A model loaded with ``load_external_data=False`` still points at its source's files; saving it as
    is would leave our artifact reading (or, re-saved with external data, writing) outside our
    output folder. Past protobuf's limit it is refused rather than split.
    """
    import onnx

    path = Path(path)
    tensors = onnx.external_data_helper._get_all_tensors(model)  # initializers, attributes, subgraphs
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise ModelFileError(f"{path}: the model still references external data files; load them first")
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ModelFileError(
            f"{path}: the model is {size} bytes, past protobuf's 2 GiB limit; edgefpn "
            "writes self-contained ONNX files only"
        )
    onnx.save(model, str(path))
