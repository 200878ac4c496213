"""Accuracy in the loop: COCO mAP of a quantized model vs the PyTorch reference, and a greedy search
for the fewest network parts to keep in float when the drop is over budget.

Sensitivity runs on a fixed subset of the val split (the first ``SENSITIVITY_IMAGES`` images) to
bound the time; the figure that is recorded and gated is always measured on the full val split.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.backends import EngineSpec, open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.data.coco import ImageRecord
from edgefpn.data.preprocess import load_image
from edgefpn.inference import PrePost
from edgefpn.metrics.coco import coco_map, detections_to_coco

__all__ = ["SENSITIVITY_IMAGES", "Evaluator", "SensitivityResult", "greedy_keep_float"]

SENSITIVITY_IMAGES = 200  # the whole default val split: a 50-image subset hid a 0.77 AP drop as 0.47


class Evaluator:
    """mAP of engines over val records; inputs of the sensitivity subset are prepared once."""

    def __init__(
        self,
        pipe: PrePost,
        records: Sequence[ImageRecord],
        category_ids: Sequence[int],
        ann_file: Path,
        *,
        threads: int,
        subset: int = SENSITIVITY_IMAGES,
        batch: int = 1,
    ) -> None:
        self.pipe, self.records, self.category_ids = pipe, list(records), list(category_ids)
        self.ann_file, self.threads = ann_file, threads
        self.batch = batch  # images per engine call: the engines' static batch (export.batch)
        self.subset_records = self.records[:subset]
        self._subset_inputs: list | None = None

    def _inputs(self, records: Sequence[ImageRecord], *, cache: bool):
        if cache and self._subset_inputs is not None:
            yield from self._subset_inputs
            return
        kept = []
        for rec in records:
            batch, lb = self.pipe.prepare(load_image(rec.path))
            if cache:
                kept.append((rec, batch, lb))
            yield rec, batch, lb
        if cache:
            self._subset_inputs = kept

    def detect(self, spec: EngineSpec, *, subset: bool = False) -> list[dict]:
        """COCO results of ``spec`` on the full val split (or the sensitivity subset)."""
        records = self.subset_records if subset else self.records
        results: list[dict] = []
        with open_runner(spec, threads=self.threads) as runner:
            items = list(self._inputs(records, cache=subset))
            for start in range(0, len(items), self.batch):
                chunk = items[start : start + self.batch]
                out = runner.infer({INPUT_NAME: np.concatenate([batch for _, batch, _ in chunk])})
                out = {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in out.items()}
                for (rec, _, _), det in zip(
                    chunk, self.pipe.decode(out, [lb for _, _, lb in chunk]), strict=True
                ):
                    results.extend(detections_to_coco(det, rec.id, self.category_ids))
        return results

    def map_of(self, results: list[dict], *, subset: bool = False) -> float:
        records = self.subset_records if subset else self.records
        ids = {r.id for r in records}
        return float(
            coco_map(self.ann_file, [r for r in results if r["image_id"] in ids], image_ids=sorted(ids))[
                "map"
            ]
        )


@dataclass
class SensitivityResult:
    budget: float
    subset_images: int
    reference_subset_map: float
    int8_subset_map: float
    candidates: list[dict[str, Any]] = field(default_factory=list)  # {group, nodes, map, recovered}
    kept_float: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # {kept_float, map, drop}
    budget_met_on_subset: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "subset_images": self.subset_images,
            "reference_subset_map": self.reference_subset_map,
            "int8_subset_map": self.int8_subset_map,
            "candidates": self.candidates,
            "kept_float": self.kept_float,
            "steps": self.steps,
            "budget_met_on_subset": self.budget_met_on_subset,
        }


def greedy_keep_float(
    evaluator: Evaluator,
    *,
    reference_results: list[dict],
    groups: dict[str, list[str]],
    base_exclude: Sequence[str],
    budget: float,
    quantize: Callable[[Path, Sequence[str]], None],
    log: Callable[[str], None],
) -> SensitivityResult:
    """Measure each group kept in float, then keep the most helpful groups until the drop fits.

    ``quantize(out, exclude)`` writes a QDQ model that keeps the nodes ``exclude`` in float.
    """
    ref = evaluator.map_of(reference_results, subset=True)

    with tempfile.TemporaryDirectory(prefix="edgefpn-sens-") as tmp:

        def subset_map(exclude: Sequence[str], tag: str) -> float:
            path = Path(tmp) / f"{tag}.onnx"
            quantize(path, exclude)
            spec = EngineSpec(f"int8-{tag}", "onnxruntime", "int8", path)
            value = evaluator.map_of(evaluator.detect(spec, subset=True), subset=True)
            path.unlink()
            return value

        base = subset_map(base_exclude, "all")
        result = SensitivityResult(budget, len(evaluator.subset_records), ref, base)
        log(
            f"[quantize] sensitivity on {result.subset_images} val images: reference {ref:.2f}, int8 "
            f"{base:.2f} mAP"
        )
        for i, (name, nodes) in enumerate(groups.items()):
            value = subset_map([*base_exclude, *nodes], f"g{i}")
            result.candidates.append(
                {
                    "group": name,
                    "nodes": len(nodes),
                    "map": round(value, 3),
                    "recovered": round(value - base, 3),
                }
            )
            log(f"[quantize]   {name:<16} in float: {value:.2f} mAP ({value - base:+.2f})")
        order = sorted(result.candidates, key=lambda c: -c["recovered"])
        current, drop = base, ref - base
        for cand in order:
            if drop <= budget:
                break
            if cand["recovered"] <= 0:
                break  # keeping the rest in float measured no gain: more float would not honestly help
            result.kept_float.append(cand["group"])
            exclude = [*base_exclude, *(n for g in result.kept_float for n in groups[g])]
            current = subset_map(exclude, f"step{len(result.kept_float)}")
            drop = ref - current
            result.steps.append(
                {"kept_float": list(result.kept_float), "map": round(current, 3), "drop": round(drop, 3)}
            )
            log(f"[quantize]   keep {', '.join(result.kept_float)} in float: drop {drop:.2f}")
        result.budget_met_on_subset = drop <= budget
    return result
