"""Detectors built from torchvision blocks, their export wrappers and their checkpoints."""

from edgefpn.models.backbones import BACKBONES, LevelSpec, ResNetFPN, resnet_fpn
from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgefpn.models.export import export_onnx
from edgefpn.models.fcos import FCOS_LEVELS, FCOSExportWrapper, fcos
from edgefpn.models.outputs import ExportModule
from edgefpn.models.registry import ARCHITECTURES, ArchSpec, arch_spec, build_model, export_wrapper
from edgefpn.models.transform import IdentityTransform

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "ArchSpec",
    "ExportModule",
    "FCOSExportWrapper",
    "FCOS_LEVELS",
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
    "resnet_fpn",
    "save_checkpoint",
]
