"""Save and load model weights: edgefpn checkpoints and torchvision-format state dicts.

Every load goes through ``torch.load(path, map_location="cpu", weights_only=True)``: a file that needs
anything beyond tensors and plain containers to unpickle is refused, never retried unsafely.

An edgefpn checkpoint is ``{"format": "edgefpn", "version": 1, "state_dict": {...}, "meta": {...}}``
where ``meta`` holds plain types only (arch, backbone, num_classes, class_names, fpn_channels, ...).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, TypeGuard, cast

import torch
from torch import Tensor, nn

from edgefpn.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checked",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "edgefpn"
CHECKPOINT_VERSION = 1
# Keys that wrap a state dict in training scripts' checkpoints (torchvision references use "model").
_WRAPPER_KEYS = ("model", "state_dict")
# BatchNorm's step counter: FrozenBatchNorm2d has none, so torchvision's pretrained detection
# checkpoints lack it and our trainable-BN state dicts carry it. It never affects outputs.
_BN_COUNTER = "num_batches_tracked"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, meta: Mapping[str, Any]) -> None:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically (temporary file + rename).

    Args:
        path: destination file, conventionally ``*.pt``.
        model: the model; its state dict is saved on CPU.
        meta: plain values only (str, int, float, bool, None, and lists / tuples / str-keyed dicts of
            them) describing how to rebuild the model: arch, backbone, num_classes, class_names, ...
    """
    _check_plain(meta, "meta")
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "meta": dict(meta),
    }
    save_state(path, payload)


def save_state(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically; a failed write raises the ``OSError`` behind it.

    torch's zip writer turns the file object's ``OSError`` (e.g. ENOSPC on a full disk) into an
    untyped ``RuntimeError`` ("unexpected pos ..."); the real error is kept and raised instead, so the
    CLI can name the file and the problem.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                torch.save(obj, cast(IO[bytes], writer))  # a RawIOBase: what torch.save writes to
            except RuntimeError as exc:
                if writer.error is not None:
                    raise writer.error from exc
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


class _RecordingWriter(io.RawIOBase):
    """A write-only file that remembers the first ``OSError`` of the file it wraps."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._f.flush()


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely and normalise it to ``{"format", "version", "state_dict", "meta"}``.

    Accepts an edgefpn checkpoint, a plain state dict (e.g. torchvision's ``model.state_dict()``), or a
    dict wrapping one under ``"model"`` or ``"state_dict"``. For the last two ``format`` is
    ``"state_dict"`` and ``meta`` is empty.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, refused by the safe unpickler, or
            holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK\x03\x04) or, in the legacy format, a pickle (0x80 = PROTO);
    # anything else would reach the unpickler and come back as a misleading "refused to unpickle"
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to unpickle (only tensors and plain containers are allowed): "
            f"{_refusal_reason(exc)}"
        ) from exc
    except RuntimeError as exc:  # the zip reader: truncated or not a zip archive
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({str(exc).splitlines()[0]})"
        ) from exc
    except (EOFError, KeyError, ValueError, OSError) as exc:  # legacy-format reader on a non-checkpoint
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from exc

    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: unsupported edgefpn checkpoint version {obj.get('version')!r} "
                f"(this edgefpn reads version {CHECKPOINT_VERSION})"
            )
        state_dict, meta = obj.get("state_dict"), obj.get("meta", {})
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{path}: checkpoint meta must be a dict, got {type(meta).__name__}")
        fmt = CHECKPOINT_FORMAT
    else:
        state_dict, meta, fmt = obj, {}, "state_dict"
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            state_dict = next((obj[k] for k in _WRAPPER_KEYS if k in obj and _is_state_dict(obj[k])), None)
    if not _is_state_dict(state_dict):
        what = (
            f"dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, Mapping) else type(obj).__name__
        )
        raise CheckpointError(f"{path}: not a checkpoint: found no state dict of tensors in a {what}")
    return {"format": fmt, "version": CHECKPOINT_VERSION, "state_dict": dict(state_dict), "meta": dict(meta)}


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` and return the checkpoint's ``meta`` (``{}`` if none).

    Everything is checked before anything is loaded, so on error ``model`` is unchanged. Missing or
    surplus ``num_batches_tracked`` buffers are tolerated (frozen-BN vs trainable-BN checkpoints).

    Raises:
        CheckpointError: unreadable file, or missing keys, unexpected keys or shape mismatches, naming the
            first three of each and their count.
    """
    checkpoint = load_checkpoint(path)
    state_dict: dict[str, Tensor] = checkpoint["state_dict"]
    load_checked(model, state_dict, where=str(path))
    return checkpoint["meta"]


def load_checked(model: nn.Module, state_dict: Mapping[str, Tensor], *, where: str) -> None:
    """Load ``state_dict`` into ``model`` after checking keys and shapes (``model`` unchanged on error).

    Raises:
        CheckpointError: ``"<where>: N missing keys (...); N unexpected keys (...); N shape mismatches
            (...)"``, the first three of each.
    """
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state_dict and not _is_bn_counter(k)]
    unexpected = [k for k in state_dict if k not in model_state and not _is_bn_counter(k)]
    mismatched = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in model_state.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        _summarise(keys, label)
        for keys, label in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (mismatched, "shape mismatches"),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"{where}: {'; '.join(problems)}")

    # Now the two key sets agree except for BN counters: fill or drop those, then load strictly.
    to_load = {k: v for k, v in state_dict.items() if k in model_state}
    to_load.update({k: v for k, v in model_state.items() if k not in to_load})
    model.load_state_dict(to_load, strict=True)


def _is_state_dict(obj: object) -> TypeGuard[Mapping[str, Tensor]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _is_bn_counter(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == _BN_COUNTER


def _summarise(items: list[str], label: str) -> str:
    shown = ", ".join(items[:3]) + (", …" if len(items) > 3 else "")
    return f"{len(items)} {label} ({shown})"


def _refusal_reason(exc: BaseException) -> str:
    # torch's message is a multi-paragraph lecture; keep the line that names the offending global/opcode.
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.removeprefix("WeightsUnpickler error:").strip()
    return "it needs more than tensors and plain containers"


def _check_plain(value: object, where: str) -> None:
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be str, got {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(
        f"{where} must hold plain values (str, int, float, bool, None, list, dict), got {value!r}"
    )
