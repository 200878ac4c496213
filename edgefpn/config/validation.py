"""Validation of a built config: every value that cannot work is a one-line ``ConfigError`` naming
the file and the key, raised at load time before any stage runs.

Separate from loading: loading checks types (an integer where an integer belongs), this module checks
meaning (ranges, known names, settings that exclude each other), and grows with every new setting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefpn.backend_names import BUILD_TARGETS, CHECKED
from edgefpn.config.sections import BACKBONE_NAMES, PRECISIONS, AugmentConfig, Config
from edgefpn.errors import ConfigError


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
