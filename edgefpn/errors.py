"""The exception hierarchy. Library code raises these; only the CLI turns them into exit codes.

Every message is one line that names the file (or config key) and the problem, e.g.
``"runs/x/model.pt: truncated checkpoint (not a zip archive)"``.
"""

from __future__ import annotations


class EdgefpnError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(EdgefpnError):
    """A config file or ``--set`` override is missing, malformed or invalid."""


class DataError(EdgefpnError):
    """A dataset folder, annotation file or image is missing or malformed."""


class CheckpointError(EdgefpnError):
    """A checkpoint cannot be read or does not fit the model."""


class ModelFileError(EdgefpnError):
    """An ONNX / IR / engine file cannot be read or is unsafe."""


class ExportError(EdgefpnError):
    """Export produced a graph that fails validation or disagrees with PyTorch."""


class BackendUnavailable(EdgefpnError):
    """An optional backend (openvino, tensorrt) is not installed or cannot run here."""

    exit_code = 3


class CheckFailed(EdgefpnError):
    """One or more engines failed an accuracy gate."""

    exit_code = 4
