"""Detectors built from torchvision blocks, their export wrapper and their checkpoints."""

from edgefpn.models.backbones import BACKBONES, LevelSpec, ResNetFPN, resnet_fpn
from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgefpn.models.export import ExportWrapper, export_onnx, output_names, output_shapes
from edgefpn.models.fcos import FCOS_LEVELS, IdentityTransform, fcos
from edgefpn.models.outputs import ExportModule
from edgefpn.models.registry import ARCHITECTURES, ArchSpec, arch_spec, build_model, export_wrapper

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "ArchSpec",
    "ExportModule",
    "FCOS_LEVELS",
    "ExportWrapper",
    "IdentityTransform",
    "LevelSpec",
    "ResNetFPN",
    "arch_spec",
    "build_model",
    "export_onnx",
    "export_wrapper",
    "fcos",
    "load_checkpoint",
    "load_weights",
    "output_names",
    "output_shapes",
    "resnet_fpn",
    "save_checkpoint",
]
