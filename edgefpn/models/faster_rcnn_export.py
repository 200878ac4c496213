"""Faster R-CNN as ONE static-shape graph: backbone, RPN, proposals, multi-level RoIAlign, box head.

torchvision's own Faster R-CNN export keeps data-dependent shapes (a variable number of proposals, RoIs
gathered per level). Here every graph output has a static shape and everything data-dependent becomes
a mask or a fixed-size TopK:

* per level: the RPN head, then TopK of ``min(pre_nms_top_n, anchors)`` objectness logits, the box
  decode (``BoxCoder`` weights 1, 1, 1, 1), clipping. Boxes smaller than 1e-3 px or with an objectness
  below ``rpn_score_thresh`` are zeroed: a zero-area box has IoU 0 with everything, so it neither
  suppresses nor is suppressed, and it is masked out afterwards;
* NMS per level (``torchvision.ops.nms``, exported as ONNX ``NonMaxSuppression``; levels never
  suppress each other, as in ``batched_nms``), its dynamic keep list scattered back into a static mask;
* a TopK of ``post_nms_top_n`` over the masked scores of all levels (torchvision's proposals), put in
  anchor order: ``proposals`` ``[N, K, 4]`` and ``proposal_scores`` ``[N, K]`` (objectness probability;
  -1 for a padding slot, last, when fewer than K proposals survive NMS; padding boxes are zeros);
* :class:`MultiLevelRoIAlign`: RoIAlign of all K boxes on every RoI level, each box's level picked by
  the FPN rule as a 0/1 mask (exact: the other levels are multiplied by 0 and added);
* the box head: ``roi_cls`` ``[N, K, C + 1]`` logits and ``roi_box`` ``[N, K, 4 (C + 1)]`` deltas.

The softmax, the box decode (weights 10, 10, 5, 5), score threshold, class-wise NMS and the detection cap
run in the shared numpy postprocess (``edgefpn.postprocess.faster_rcnn``), like every other detector's.
The per-level RPN tensors ``rpn_obj_<level>`` ``[N, A, H_l, W_l]`` and ``rpn_box_<level>``
``[N, 4A, H_l, W_l]`` are outputs too, so ``check`` can report per-level agreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

from edgefpn.models.faster_rcnn import EdgeFasterRCNN
from edgefpn.models.necks.soft_roi import StaticRoIPool
from edgefpn.models.outputs import level_size

__all__ = [
    "FasterRCNNExportWrapper",
    "MultiLevelRoIAlign",
    "faster_rcnn_output_names",
    "faster_rcnn_output_shapes",
]

# torchvision's RegionProposalNetwork.min_size: proposals narrower or shorter than this are dropped.
_RPN_MIN_SIZE = 1e-3
# Score of a padding / dropped proposal slot: objectness probabilities are >= 0.
_INVALID = -1.0
# Sort key of padding slots: after every anchor index.
_PADDING_KEY = 2**24


def faster_rcnn_output_names(levels: Sequence[str]) -> list[str]:
    """``rpn_obj_<l>``..., ``rpn_box_<l>``..., ``proposals``, ``proposal_scores``, ``roi_cls``,
    ``roi_box``."""
    return [
        *(f"rpn_obj_{level}" for level in levels),
        *(f"rpn_box_{level}" for level in levels),
        "proposals",
        "proposal_scores",
        "roi_cls",
        "roi_box",
    ]


def _num_proposals(grid_anchors: Sequence[int], pre_nms_top_n: int, post_nms_top_n: int) -> int:
    candidates = sum(min(pre_nms_top_n, a) for a in grid_anchors)
    return min(post_nms_top_n, candidates)


def faster_rcnn_output_shapes(
    *,
    batch: int,
    input_size: tuple[int, int],
    num_classes: int,
    levels: Sequence[str],
    strides: Sequence[int],
    anchors_per_location: int,
    pre_nms_top_n: int,
    post_nms_top_n: int,
) -> dict[str, tuple[int, ...]]:
    """The static shape of every output for an input ``[batch, 3, H, W]``; ``num_classes`` excludes
    the background."""
    height, width = input_size
    grids = {
        lvl: (level_size(height, s), level_size(width, s)) for lvl, s in zip(levels, strides, strict=True)
    }
    a = anchors_per_location
    k = _num_proposals([a * h * w for h, w in grids.values()], pre_nms_top_n, post_nms_top_n)
    shapes: dict[str, tuple[int, ...]] = {}
    for lvl, (h, w) in grids.items():
        shapes[f"rpn_obj_{lvl}"] = (batch, a, h, w)
    for lvl, (h, w) in grids.items():
        shapes[f"rpn_box_{lvl}"] = (batch, 4 * a, h, w)
    shapes["proposals"] = (batch, k, 4)
    shapes["proposal_scores"] = (batch, k)
    shapes["roi_cls"] = (batch, k, num_classes + 1)
    shapes["roi_box"] = (batch, k, 4 * (num_classes + 1))
    return shapes


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of every box on the level the FPN rule picks, with static shapes.

    ``k = floor(4 + log2(sqrt(wh) / 224) + 1e-6)`` clamped to the RoI levels, exactly torchvision's
    ``LevelMapper``. Each level pools all boxes and a 0/1 mask keeps the right one, so the result equals
    torchvision's data-dependent gather. This is the seam for other RoI feature extractors (e.g. AugFPN's
    soft RoI selection fuses all levels instead of picking one): same inputs, same ``[R, C, S, S]`` output.

    Args:
        levels: the RoI levels, finest first (``("p2", "p3", "p4", "p5")``).
        strides: their strides in input pixels (``(4, 8, 16, 32)``).
        output_size: pooled side ``S`` (7).
        sampling_ratio: RoIAlign samples per bin side (2).
    """

    def __init__(
        self, levels: Sequence[str], *, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2
    ) -> None:
        super().__init__()
        if not levels or len(levels) != len(strides):
            raise ValueError(f"levels must be non-empty and match strides, got {levels!r} and {strides!r}")
        self.levels = tuple(levels)
        self.strides = tuple(int(s) for s in strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.k_min = int(math.log2(self.strides[0]))
        self.k_max = int(math.log2(self.strides[-1]))

    def level_index(self, boxes: Tensor) -> Tensor:  # boxes: [R, 4] -> [R] float level index 0..L-1
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [R]
        k = torch.floor(4 + torch.log2(torch.sqrt(area) / 224) + torch.tensor(1e-6, dtype=boxes.dtype))
        return torch.clamp(k, min=self.k_min, max=self.k_max) - self.k_min

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``features`` one ``[N, C, H_l, W_l]`` per level; ``rois`` ``[R, 5]`` (batch index, x1, y1, x2,
        y2) in input pixels -> ``[R, C, S, S]``."""
        level = self.level_index(rois[:, 1:])[:, None, None, None]  # [R, 1, 1, 1]
        pooled = None
        for i, (stride, feature) in enumerate(zip(self.strides, features, strict=True)):
            per_level = roi_align(
                feature,
                rois,
                output_size=self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=False,
            )  # [R, C, S, S]
            masked = per_level * (level == i).to(per_level.dtype)
            pooled = masked if pooled is None else pooled + masked
        assert pooled is not None  # __init__ refuses empty levels
        return pooled


class FasterRCNNExportWrapper(nn.Module):
    """An :class:`EdgeFasterRCNN` as a fixed tuple of static tensors (see the module docstring).

    Args:
        model: the detector (export it in eval mode).
    """

    def __init__(self, model: EdgeFasterRCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self.levels: tuple[str, ...] = tuple(model.levels)
        self.roi_levels: tuple[str, ...] = tuple(model.roi_levels)
        self.strides: tuple[int, ...] = tuple(model.level_strides[lvl] for lvl in self.levels)
        pool = model.roi_heads.box_roi_pool
        self.roi_align: nn.Module
        if isinstance(pool, StaticRoIPool):  # AugFPN's Soft RoI Selection: already static, used as is
            self.roi_align = pool.pooler
        else:
            self.roi_align = MultiLevelRoIAlign(
                self.roi_levels,
                strides=[model.level_strides[lvl] for lvl in self.roi_levels],
                output_size=pool.output_size[0],
                sampling_ratio=pool.sampling_ratio,
            )
        self.box_coder = model.rpn.box_coder
        self.pre_nms_top_n = int(model.rpn._pre_nms_top_n["testing"])
        self.post_nms_top_n = int(model.rpn._post_nms_top_n["testing"])
        self.rpn_nms_thresh = float(model.rpn.nms_thresh)
        self.rpn_score_thresh = float(model.rpn.score_thresh)
        self.num_classes: int = model.roi_heads.box_predictor.cls_score.out_features - 1
        self.anchors_per_location = model.rpn.anchor_generator.num_anchors_per_location()[0]
        self._anchor_generator = model.rpn.anchor_generator
        # (H, W) -> per-level anchors. Plain attribute, not buffers: they follow the input size, and
        # during export they are constants of the traced graph (folded into initializers).
        self._anchor_cache: dict[tuple[int, int], list[Tensor]] = {}

    def anchors(self, input_size: tuple[int, int]) -> list[Tensor]:
        """torchvision's anchors for an ``(H, W)`` input, one ``[H_l * W_l * A, 4]`` tensor per level."""
        if input_size not in self._anchor_cache:
            h, w = input_size
            grids = [[level_size(h, s), level_size(w, s)] for s in self.strides]
            strides = [[torch.tensor(h // gh), torch.tensor(w // gw)] for gh, gw in grids]
            generator = self._anchor_generator
            with torch.no_grad():
                generator.set_cell_anchors(torch.float32, torch.device("cpu"))
                self._anchor_cache[input_size] = [a.clone() for a in generator.grid_anchors(grids, strides)]
        return self._anchor_cache[input_size]

    def output_names(self) -> list[str]:
        return faster_rcnn_output_names(self.levels)

    def output_shapes(self, *, batch: int, input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The static shape of every output for an input ``[batch, 3, H, W]``, in output order."""
        return faster_rcnn_output_shapes(
            batch=batch,
            input_size=input_size,
            num_classes=self.num_classes,
            levels=self.levels,
            strides=self.strides,
            anchors_per_location=self.anchors_per_location,
            pre_nms_top_n=self.pre_nms_top_n,
            post_nms_top_n=self.post_nms_top_n,
        )

    def _level_candidates(
        self, objectness: Tensor, deltas: Tensor, anchors: Tensor, input_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One level of one image: ``objectness`` [A, H, W], ``deltas`` [4A, H, W] -> boxes [k, 4], masked
        scores [k] (``_INVALID`` where torchvision drops the candidate or NMS suppresses it) and the
        candidates' anchor indices [k] within the level."""
        a = objectness.shape[0]
        logits = objectness.permute(1, 2, 0).reshape(-1)  # [HWA], torchvision's location-major order
        codes = deltas.reshape(a, 4, deltas.shape[1], deltas.shape[2]).permute(2, 3, 0, 1).reshape(-1, 4)
        k = min(self.pre_nms_top_n, anchors.shape[0])
        top, idx = logits.topk(k)  # [k]
        boxes = self.box_coder.decode_single(codes[idx], anchors[idx])  # [k, 4]
        h, w = input_size
        boxes = torch.min(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))
        scores = torch.sigmoid(top)  # [k]
        valid = (boxes[:, 2] - boxes[:, 0] >= _RPN_MIN_SIZE) & (boxes[:, 3] - boxes[:, 1] >= _RPN_MIN_SIZE)
        valid = valid & (scores >= self.rpn_score_thresh)
        boxes = boxes * valid[:, None].to(boxes.dtype)  # dropped candidates: zero-area, inert in NMS
        keep = nms(boxes, scores, self.rpn_nms_thresh)  # [m] dynamic
        kept = torch.zeros_like(scores).scatter(0, keep, torch.ones_like(keep, dtype=scores.dtype)) > 0
        return boxes, torch.where(kept & valid, scores, torch.full_like(scores, _INVALID)), idx

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:  # images: [N, 3, H, W]
        features = self.backbone(images)  # {"p2": [N, F, H/4, W/4], ..., "p6": [N, F, H/64, W/64]}
        feats = [features[lvl] for lvl in self.levels]
        objectness, deltas = self.rpn_head(feats)  # per level [N, A, H_l, W_l], [N, 4A, H_l, W_l]
        # int(): the input size is static; the anchors become constants of an exported graph.
        input_size = (int(images.shape[-2]), int(images.shape[-1]))
        anchors = self.anchors(input_size)

        # Global anchor index of each level's first anchor: candidates are later ordered by anchor index.
        offsets = [sum(a.shape[0] for a in anchors[:i]) for i in range(len(anchors))]
        proposals, proposal_scores = [], []
        for i in range(images.shape[0]):
            boxes, scores, ids = zip(
                *(
                    self._level_candidates(o[i], d[i], a, input_size)
                    for o, d, a in zip(objectness, deltas, anchors, strict=True)
                ),
                strict=True,
            )
            all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)  # [T, 4], [T]
            all_ids = torch.cat([idx + off for idx, off in zip(ids, offsets, strict=True)])  # [T]
            k = min(self.post_nms_top_n, all_scores.shape[0])
            top, sel = all_scores.topk(k)  # [K]: the post_nms_top_n best that survived NMS, as torchvision
            # Which K proposals is what matters, not their order (each RoI is decoded on its own, and the
            # final NMS sorts by score). Ordering them by anchor index, padding last, makes the layout
            # independent of near-tied objectness scores, which differ in the last bits between engines.
            key = torch.where(top >= 0, all_ids[sel], torch.full_like(all_ids[sel], _PADDING_KEY))
            order = key.to(torch.float32).topk(k, largest=False).indices  # ids < 2**24: exact in float32
            top, sel = top[order], sel[order]
            chosen = all_boxes[sel] * (top >= 0)[:, None].to(all_boxes.dtype)  # padding slots: zero boxes
            proposals.append(chosen)
            proposal_scores.append(top)
        props = torch.stack(proposals)  # [N, K, 4]
        prop_scores = torch.stack(proposal_scores)  # [N, K]

        n, k = prop_scores.shape
        batch_idx = torch.arange(n, dtype=props.dtype)[:, None, None].expand(n, k, 1)  # [N, K, 1]
        rois = torch.cat([batch_idx, props], dim=2).reshape(n * k, 5)  # [NK, 5]
        pooled = self.roi_align([features[lvl] for lvl in self.roi_levels], rois)  # [NK, F, 7, 7]
        x = self.box_head(pooled)  # [NK, R]
        cls_logits, box_deltas = self.box_predictor(x)  # [NK, C + 1], [NK, 4 (C + 1)]
        return (
            *objectness,
            *deltas,
            props,
            prop_scores,
            cls_logits.reshape(n, k, -1),
            box_deltas.reshape(n, k, -1),
        )
