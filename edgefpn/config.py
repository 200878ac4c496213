"""Frozen, typed configuration loaded from YAML, with dotted ``--set a.b=c`` overrides.

The config is resolved once, validated on load and never mutated: a stage that must change a
setting builds a new config with :func:`dataclasses.replace` and records it in its manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgefpn.backend_names import BUILD_TARGETS, CHECKED, DEFAULT_CHECKED, DEFAULT_TARGETS
from edgefpn.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; anything bigger is a mistake or an attack
PRECISIONS = ("fp32", "fp16", "int8")
# edgefpn.models.backbones.FPN_BACKBONES, spelled out so that loading a config imports no torch (tested)
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large")


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    threads: int = 2  # torch / ORT / OpenVINO intra-op threads, fixed and recorded


@dataclass(frozen=True)
class SynthConfig:
    num_train: int = 2000
    num_val: int = 200
    num_calib: int = 300
    seed: int = 0
    min_side: int = 224
    max_side: int = 384


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synth"
    builtin: bool = True  # generate the built-in synthetic dataset into `root` when it is missing
    synth: SynthConfig = field(default_factory=SynthConfig)
    train_split: str = "train"
    val_split: str = "val"
    calib_split: str = "calib"


@dataclass(frozen=True)
class RpnConfig:
    """Faster R-CNN's region proposal settings (torchvision's test-time defaults); baked into the graph."""

    pre_nms_top_n: int = 1000  # per level, before NMS
    post_nms_top_n: int = 1000  # in all, after NMS: the static proposal count of the exported graph
    nms_thresh: float = 0.7
    score_thresh: float = 0.0  # objectness probability; torchvision's mobilenet layouts use 0.05


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "fcos"
    backbone: str = "resnet18"
    backbone_width: int = 64  # first ResNet stage; 32 is the slim edge variant
    neck: str = "fpn"
    norm: str = "bn"
    fpn_channels: int = 64
    head_convs: int = 2
    input_size: tuple[int, int] = (320, 320)  # (H, W), static
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int | None = None  # None: taken from the training annotations
    class_names: tuple[str, ...] | None = None
    weights: str | None = None  # a checkpoint to load instead of training
    # A torchvision ImageNet classification state dict (e.g. resnet50-0676ba61.pth) loaded into the
    # backbone before training; its sha256 is a train input. Never downloaded.
    backbone_weights: str | None = None
    # torchvision's meaning (_resnet_fpn_extractor): how many of the 5 backbone stages train, counted
    # from the top. None: 3 with backbone_weights (torchvision's default), else 5 (from scratch).
    trainable_layers: int | None = None
    variant: str = "v1"  # torchvision's layout variant: v1, or v2 (e.g. fasterrcnn_resnet50_fpn_v2)
    representation_size: int = 1024  # faster_rcnn: width of the box head's fully connected layers
    rpn: RpnConfig = field(default_factory=RpnConfig)  # faster_rcnn only


@dataclass(frozen=True)
class PostprocessConfig:
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100


@dataclass(frozen=True)
class DeployConfig:
    """What a deployed detector keeps: ``edgefpn predict``, the packaged runtime and the end-to-end
    latency of check use it. mAP and the agreement gates keep ``postprocess.score_thresh``: COCO
    evaluation wants every low-score box (0.05 by convention), an application does not."""

    score_thresh: float | None = None  # None: postprocess.score_thresh


@dataclass(frozen=True)
class CropConfig:
    """A random crop of the original image; boxes are cut to it (edgefpn.data.augment)."""

    prob: float = 0.5  # share of images that are cropped
    min_scale: float = 0.3  # crop side as a fraction of the image side, drawn per side
    max_scale: float = 1.0
    min_visible: float = 0.5  # a box cut by the crop stays a target if this share of its area is kept


@dataclass(frozen=True)
class PhotometricConfig:
    """Colour jitter; each factor is drawn uniformly in [1 - x, 1 + x] (hue: a shift in [-x, x] turns)."""

    prob: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation beyond the flip; each part is off when null (the default)."""

    scale_jitter: tuple[float, float] | None = None  # the letterbox scale times U(lo, hi)
    crop: CropConfig | None = None
    photometric: PhotometricConfig | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    hflip: bool = True
    eval_every: int = 4  # epochs; 0 disables periodic val mAP
    eval_images: int = 100  # val images used by periodic evaluation (the check stage uses all)
    channels_last: bool = False
    grad_clip: float = 10.0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    # off | bf16 (CPU or CUDA) | fp16 (CUDA, with a GradScaler) | auto (bf16 where the device computes
    # it natively, else off): autocast of the forward pass. YAML 1.1 reads a bare `off` as false, so
    # false is taken for "off" (and stored as "off").
    amp: str | bool = "off"
    workers: int = 0  # DataLoader worker processes per rank (decode + augmentation run there)
    sync_bn: bool | None = None  # SyncBatchNorm for trainable BN; None: on when world size > 1
    timeout_s: int = 600  # collective timeout under torchrun: a lost rank ends the job, never a hang
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.amp is False:
            object.__setattr__(self, "amp", "off")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    batch: int = 1
    simplify: bool = True
    atol: float = 1e-4
    # The end-to-end contract (edgefpn.e2e): `uint8` adds graphs fed the letterboxed uint8 image, `nms`
    # graphs that return detections. Either makes model.e2e.onnx and an `-e2e` twin of every engine;
    # model.onnx and the raw engines stay as they are.
    input: str = "float"  # float | uint8
    nms: bool = False


@dataclass(frozen=True)
class QuantizeConfig:
    enabled: bool = True  # part of `edgefpn run` / `make all`
    method: str = "minmax"  # minmax | percentile | entropy (QDQ ONNX calibration)
    percentile: float = 99.99
    num_images: int = 300  # calibration images, chosen deterministically
    batch_size: int = 8  # calibration images streamed per batch (memory stays flat)
    calib_folder: str | None = None  # a folder of the user's images instead of data.calib_split
    exclude_nodes: tuple[str, ...] = ()  # ONNX node names kept in float
    max_map_drop: float = 0.5  # AP points; past it, sensitive layers are kept in float
    fp16: bool = True  # also write the FP16 ONNX
    openvino: bool = True  # also quantize for OpenVINO with NNCF (needs the openvino extra)
    # the onnxruntime-int8 engine's QDQ flavour: u8s8 (uint8 activations, what ORT's x86 kernels fuse and
    # run fastest) or symmetric (model.int8.onnx's TensorRT scheme, which ORT runs as float + conversions)
    onnxruntime: str = "u8s8"


@dataclass(frozen=True)
class TensorRTConfig:
    workspace_mb: int = 2048
    dla_core: int | None = None  # Jetson DLA core, with GPU fallback
    hardware_compatible: bool = False  # Ampere+ hardware-compatible engine
    version_compatible: bool = False
    builder_optimization_level: int = 3
    timing_cache: bool = True


@dataclass(frozen=True)
class BuildConfig:
    targets: tuple[str, ...] = DEFAULT_TARGETS  # those missing on this machine are skipped
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    openvino_hint: str = "latency"  # latency | throughput
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)


@dataclass(frozen=True)
class CheckConfig:
    backends: tuple[str, ...] = DEFAULT_CHECKED
    max_map_drop: Mapping[str, float] = field(
        default_factory=lambda: {"fp32": 0.05, "fp16": 0.2, "int8": 0.5}
    )
    min_cosine: Mapping[str, float] = field(
        default_factory=lambda: {"fp32": 0.99999, "fp16": 0.999, "int8": 0.97}
    )
    max_images: int | None = None  # None: the full val split
    warmup: int = 5
    latency_iters: int = 50
    # An INT8 engine must be at least this many times faster (model only) than the FP32 engine of the
    # same backend, timed in interleaved pairs (see edgefpn.checking.latency.int8_speedups); 1.0: never
    # slower.
    min_int8_speedup: float = 1.0

    def __post_init__(self) -> None:
        # defaults are plain dicts; freeze them like the ones loaded from YAML
        for name in ("max_map_drop", "min_cosine"):
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    # Where the settings came from ("configs/x.yaml + --set"), for errors found after loading (a
    # combination a model builder refuses). Not a setting: never read from YAML, hashed or dumped.
    source: str = field(default="<defaults>", compare=False, metadata={"setting": False})


def _settings(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("setting", True)]


# ----------------------------------------------------------------------------------------------
# loading


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: configs never need them and alias bombs exist."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases are not allowed in configs", event.start_mark
            )
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is {size} bytes, more than the {MAX_CONFIG_BYTES} byte cap")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # PyYAML composes recursively: "[[[[..." a few thousand deep overflows it
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    try:
        value = yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key} has an invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} must have {len(args)} items, got {list(value)!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        vt = args[1] if args else Any
        return types.MappingProxyType(
            {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
        )
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {tp!r}")  # a bug in this module


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in _settings(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {full}{hint}")
        tp = hints[key]
        if isinstance(value, dict) and (typing.get_origin(tp) in (Mapping, dict) or tp is Mapping):
            # a partial table (`--set check.max_map_drop.int8=0.3`) updates the default table
            default = next(f for f in _settings(cls) if f.name == key)
            if default.default_factory is not dataclasses.MISSING:
                value = {**default.default_factory(), **value}
        kwargs[key] = _coerce(value, tp, full, source)
    return cls(**kwargs)


def _validate(cfg: Config, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key} {why}")

    from edgefpn.postprocess import DECODERS  # numpy only; the torch registry mirrors its keys (tested)

    if cfg.model.arch not in DECODERS:
        raise bad("model.arch", f"must be one of {list(DECODERS)}, got {cfg.model.arch!r}")
    if cfg.model.backbone not in BACKBONE_NAMES:
        raise bad("model.backbone", f"must be one of {list(BACKBONE_NAMES)}, got {cfg.model.backbone!r}")
    h, w = cfg.model.input_size
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise bad("model.input_size", f"must be positive multiples of 32, got {[h, w]}")
    if cfg.model.fpn_channels <= 0 or cfg.model.fpn_channels % 32:
        raise bad("model.fpn_channels", f"must be a positive multiple of 32, got {cfg.model.fpn_channels}")
    if cfg.model.neck not in ("fpn", "augfpn"):  # edgefpn.models.necks.NECKS (config stays torch-free)
        raise bad("model.neck", f"must be fpn or augfpn, got {cfg.model.neck!r}")
    if cfg.model.variant not in ("v1", "v2"):
        raise bad("model.variant", f"must be v1 or v2, got {cfg.model.variant!r}")
    if cfg.model.variant != "v1" and cfg.model.arch != "faster_rcnn":
        # RetinaNet's v2 is its own arch name; a silently ignored variant would build v1
        raise bad(
            "model.variant",
            f"applies to faster_rcnn only (use model.arch=retinanet_v2 for "
            f"RetinaNet v2), got {cfg.model.variant!r} with arch {cfg.model.arch!r}",
        )
    rpn = cfg.model.rpn
    if cfg.model.representation_size <= 0 or rpn.pre_nms_top_n <= 0 or rpn.post_nms_top_n <= 0:
        raise bad("model", "needs representation_size, rpn.pre_nms_top_n and rpn.post_nms_top_n > 0")
    if not 0.0 < rpn.nms_thresh <= 1.0 or not 0.0 <= rpn.score_thresh < 1.0:
        raise bad("model.rpn", f"thresholds out of range: nms {rpn.nms_thresh}, score {rpn.score_thresh}")
    if cfg.model.head_convs < 0:
        raise bad("model.head_convs", f"must be >= 0, got {cfg.model.head_convs}")
    if any(s <= 0 for s in cfg.model.std):
        raise bad("model.std", f"must be positive, got {list(cfg.model.std)}")
    if cfg.model.num_classes is not None and cfg.model.num_classes <= 0:
        raise bad("model.num_classes", f"must be positive, got {cfg.model.num_classes}")
    if cfg.run.threads <= 0:
        raise bad("run.threads", f"must be positive, got {cfg.run.threads}")
    if cfg.train.epochs < 0 or cfg.train.batch_size <= 0 or cfg.train.lr <= 0:
        raise bad("train", "needs epochs >= 0, batch_size > 0 and lr > 0")
    if cfg.train.optimizer not in ("sgd", "adamw"):
        raise bad("train.optimizer", f"must be sgd or adamw, got {cfg.train.optimizer!r}")
    dev = cfg.train.device
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise bad("train.device", f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
    if cfg.train.amp not in ("off", "bf16", "fp16", "auto"):
        raise bad("train.amp", f"must be off, bf16, fp16 or auto, got {cfg.train.amp!r}")
    if cfg.train.workers < 0 or cfg.train.timeout_s <= 0:
        raise bad(
            "train",
            f"needs workers >= 0 and timeout_s > 0, got {cfg.train.workers} and {cfg.train.timeout_s}",
        )
    _validate_augment(cfg.train.augment, bad)
    if cfg.model.trainable_layers is not None:
        top = (
            6 if cfg.model.backbone == "mobilenet_v3_large" else 5
        )  # torchvision's _validate_trainable_layers
        if not 0 <= cfg.model.trainable_layers <= top:
            raise bad(
                "model.trainable_layers",
                f"must be in 0..{top} for {cfg.model.backbone}, got {cfg.model.trainable_layers}",
            )
        if cfg.model.backbone_weights is None:
            raise bad(
                "model.trainable_layers",
                "applies to a pretrained backbone only: set model.backbone_weights "
                "(from scratch every layer trains)",
            )
    if cfg.model.backbone_weights is not None:
        if cfg.model.backbone_width != 64:
            raise bad(
                "model.backbone_weights",
                f"needs backbone_width 64 (ImageNet weights are torchvision's "
                f"full-width networks), got {cfg.model.backbone_width}",
            )
        if cfg.model.weights is not None:
            raise bad(
                "model.backbone_weights",
                "and model.weights exclude each other (model.weights loads a whole trained detector)",
            )
    pp = cfg.postprocess
    if not 0.0 <= pp.score_thresh < 1.0 or not 0.0 < pp.nms_thresh <= 1.0:
        raise bad("postprocess", f"thresholds out of range: score {pp.score_thresh}, nms {pp.nms_thresh}")
    if pp.topk_candidates <= 0 or pp.detections_per_img <= 0:
        raise bad("postprocess", "topk_candidates and detections_per_img must be positive")
    if cfg.deploy.score_thresh is not None and not 0.0 <= cfg.deploy.score_thresh < 1.0:
        raise bad("deploy.score_thresh", f"must be in [0, 1), got {cfg.deploy.score_thresh}")
    for name, table in (
        ("check.max_map_drop", cfg.check.max_map_drop),
        ("check.min_cosine", cfg.check.min_cosine),
    ):
        unknown = sorted(set(table) - set(PRECISIONS))
        if unknown:
            raise bad(name, f"has unknown precisions {unknown}; valid: {list(PRECISIONS)}")
    q = cfg.quantize
    if q.method not in ("minmax", "percentile", "entropy"):
        raise bad("quantize.method", f"must be minmax, percentile or entropy, got {q.method!r}")
    if q.onnxruntime not in ("u8s8", "symmetric"):
        raise bad("quantize.onnxruntime", f"must be u8s8 or symmetric, got {q.onnxruntime!r}")
    if q.num_images <= 0 or q.batch_size <= 0 or not 0.0 < q.percentile <= 100.0:
        raise bad("quantize", "needs num_images > 0, batch_size > 0 and 0 < percentile <= 100")
    for t in cfg.build.targets:
        if t not in BUILD_TARGETS:
            raise bad("build.targets", f"has unknown target {t!r}; valid: {list(BUILD_TARGETS)}")
    for b in cfg.check.backends:
        if b not in CHECKED:
            raise bad("check.backends", f"has unknown backend {b!r}; valid: {list(CHECKED)}")
    for p_ in cfg.build.precisions:
        if p_ not in PRECISIONS:
            raise bad("build.precisions", f"has unknown precision {p_!r}; valid: {list(PRECISIONS)}")
    if cfg.build.openvino_hint not in ("latency", "throughput"):
        raise bad("build.openvino_hint", f"must be latency or throughput, got {cfg.build.openvino_hint!r}")
    if cfg.export.batch <= 0:
        raise bad("export.batch", f"must be positive, got {cfg.export.batch}")
    if cfg.export.input not in ("float", "uint8"):
        raise bad("export.input", f"must be float or uint8, got {cfg.export.input!r}")
    if (cfg.export.nms or cfg.export.input == "uint8") and cfg.export.opset < 13:
        raise bad(
            "export.opset", f"must be >= 13 for export.nms / export.input=uint8, got {cfg.export.opset}"
        )
    for split_key in ("train_split", "val_split", "calib_split"):
        split = getattr(cfg.data, split_key)
        if not split or "/" in split or split.startswith("."):
            raise bad(f"data.{split_key}", f"must be a plain split name, got {split!r}")
    if cfg.data.val_split in (cfg.data.train_split, cfg.data.calib_split):
        raise bad(
            "data.val_split", f"must differ from the train and calib splits, got {cfg.data.val_split!r}"
        )
    _validate_ranges(cfg, bad)


# Every numeric setting not checked above, as (key, predicate, what it must be). Checked at load time so
# that a value that cannot work is a one-line config error before any work, not an IndexError after a
# whole evaluation or an "internal error" from a library that asserts (issue 16).
_Check = tuple[str, Callable[[Any], bool], str]
_RANGES: tuple[_Check, ...] = (
    ("check.min_int8_speedup", lambda v: v >= 0, ">= 0"),
    ("run.seed", lambda v: v >= 0, ">= 0"),
    ("data.synth.num_train", lambda v: v > 0, "> 0"),
    ("data.synth.num_val", lambda v: v > 0, "> 0"),
    ("data.synth.num_calib", lambda v: v > 0, "> 0"),
    ("data.synth.seed", lambda v: v >= 0, ">= 0"),
    # edgefpn.data.synth.generate's own bounds (32..4096)
    ("data.synth.min_side", lambda v: 32 <= v <= 4096, "in [32, 4096]"),
    ("data.synth.max_side", lambda v: 32 <= v <= 4096, "in [32, 4096]"),
    ("model.backbone_width", lambda v: v > 0 and v % 8 == 0, "a positive multiple of 8"),
    ("train.momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("train.weight_decay", lambda v: v >= 0.0, ">= 0"),
    ("train.warmup_iters", lambda v: v >= 0, ">= 0"),
    ("train.eval_every", lambda v: v >= 0, ">= 0 (0 disables periodic evaluation)"),
    ("train.eval_images", lambda v: v > 0, "> 0"),
    ("train.grad_clip", lambda v: v >= 0.0, ">= 0 (0 disables clipping)"),
    # torch's TorchScript exporter (edgefpn.models.export) takes opsets 7..20 (torch.onnx._constants)
    ("export.opset", lambda v: 7 <= v <= 20, "in [7, 20]"),
    ("export.atol", lambda v: v >= 0.0, ">= 0"),
    ("build.tensorrt.workspace_mb", lambda v: v > 0, "> 0"),
    ("build.tensorrt.dla_core", lambda v: v is None or v >= 0, ">= 0"),
    ("build.tensorrt.builder_optimization_level", lambda v: 0 <= v <= 5, "in [0, 5]"),
    ("check.max_images", lambda v: v is None or v > 0, "> 0 (or null for the whole val split)"),
    ("check.warmup", lambda v: v >= 0, ">= 0"),
    ("check.latency_iters", lambda v: v > 0, "> 0"),
)


def _validate_ranges(cfg: Config, bad: Callable[[str, str], ConfigError]) -> None:
    for key, ok, want in _RANGES:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise bad(key, f"must be {want}, got {value!r}")
    synth = cfg.data.synth
    if synth.min_side > synth.max_side:
        raise bad(
            "data.synth.min_side", f"must be <= data.synth.max_side, got {synth.min_side} > {synth.max_side}"
        )
    names, n = cfg.model.class_names, cfg.model.num_classes
    if names is not None and n is not None and len(names) != n:
        raise bad("model.class_names", f"has {len(names)} names for model.num_classes {n}")
    # check.max_map_drop / check.min_cosine / quantize.max_map_drop are left free: an impossible gate
    # (a negative drop, a cosine above 1) is how a test makes a gate fail


def _validate_augment(aug: AugmentConfig, bad: Any) -> None:
    if aug.scale_jitter is not None:
        lo, hi = aug.scale_jitter
        if not 0.0 < lo <= hi <= 4.0:
            raise bad(
                "train.augment.scale_jitter", f"must be [lo, hi] with 0 < lo <= hi <= 4, got {[lo, hi]}"
            )
    if (c := aug.crop) is not None:
        if not 0.0 <= c.prob <= 1.0:
            raise bad("train.augment.crop.prob", f"must be in [0, 1], got {c.prob}")
        if not 0.0 < c.min_scale <= c.max_scale <= 1.0:
            raise bad(
                "train.augment.crop",
                f"needs 0 < min_scale <= max_scale <= 1, got {[c.min_scale, c.max_scale]}",
            )
        if not 0.0 <= c.min_visible <= 1.0:
            raise bad("train.augment.crop.min_visible", f"must be in [0, 1], got {c.min_visible}")
    if (p := aug.photometric) is not None:
        if not 0.0 <= p.prob <= 1.0:
            raise bad("train.augment.photometric.prob", f"must be in [0, 1], got {p.prob}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(p, name) < 1.0:
                raise bad(f"train.augment.photometric.{name}", f"must be in [0, 1), got {getattr(p, name)}")
        if not 0.0 <= p.hue <= 0.5:
            raise bad("train.augment.photometric.hue", f"must be in [0, 0.5], got {p.hue}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (or the defaults), apply dotted overrides, validate, return a frozen Config."""
    tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    for item in overrides:
        keys, value = _parse_override(item)
        _merge_override(tree, keys, value)
    if overrides:
        source += " + --set"
    cfg = dataclasses.replace(_build(Config, tree, "", source), source=source)
    _validate(cfg, source)
    return cfg


# ----------------------------------------------------------------------------------------------
# hashing and dumping


def to_dict(obj: Any) -> Any:
    """A plain, JSON-able view of a config (or any part of one)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in _settings(type(obj))}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in sorted(obj.items())}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def config_hash(*parts: Any) -> str:
    """sha256 over the canonical JSON of the given config sections (order matters)."""
    blob = json.dumps([to_dict(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
