"""The config's sections: one frozen dataclass per YAML table, with the defaults of every setting.

What a setting is called, its type and its default live here and nowhere else; loading
(:mod:`edgefpn.config.loading`) reads the types from these annotations and validation
(:mod:`edgefpn.config.validation`) checks the values; a new setting starts here.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgefpn.backend_names import DEFAULT_CHECKED, DEFAULT_TARGETS

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
