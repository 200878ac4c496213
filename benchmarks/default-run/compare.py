"""Two default runs side by side: are the outputs the same, apart from timings?

    .venv/bin/python benchmarks/default-run/compare.py BEFORE_RUN_DIR AFTER_RUN_DIR

Compares the bytes of every ONNX model and OpenVINO IR, the trained weights of model.pt (its meta holds
training timings, so not its bytes), and every accuracy figure check wrote per engine (mAP, mAP50,
deltas, tensor agreement, detection agreement): everything in report.json except latency, FPS and
machine facts. Engines only in AFTER (a backend added to the default run) are listed, not failed.
Exit 0 when everything BEFORE has is unchanged in AFTER.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

# report.json engine fields that are timings or derived from timings: allowed to differ
_TIMED = {"fps", "latency", "latency_ms", "achieved_gflops", "fraction_of_peak", "int8_speedup", "speed"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(run: Path) -> dict[str, str]:
    out = {}
    for p in sorted(run.glob("model*.onnx")) + sorted(run.glob("openvino/*/model.*")):
        out[str(p.relative_to(run))] = _sha(p)
    return out


def _weights(run: Path) -> str:
    import torch

    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]  # {"format", "version", "state_dict", "meta"}: meta holds timings
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if hasattr(v, "numpy") else repr(v).encode())
    return h.hexdigest()


def _figures(e: dict) -> dict:
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _TIMED and "ms" not in k and "fps" not in k}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(e)


def main(before: Path, after: Path) -> int:
    bad = 0
    fb, fa = _files(before), _files(after)
    for name, digest in fb.items():
        same = fa.get(name) == digest
        bad += not same
        print(f"{'same' if same else 'DIFFERENT':9} {name} {digest[:16]}")
    for name in sorted(set(fa) - set(fb)):
        print(f"{'new':9} {name} {fa[name][:16]}")
    wb, wa = _weights(before), _weights(after)
    bad += wb != wa
    print(f"{'same' if wb == wa else 'DIFFERENT':9} model.pt weights {wb[:16]}")
    rb = {e["name"]: e for e in json.loads((before / "report.json").read_text())["engines"]}
    ra = {e["name"]: e for e in json.loads((after / "report.json").read_text())["engines"]}
    for name, e in rb.items():
        same = name in ra and _figures(e) == _figures(ra[name])
        bad += not same
        print(
            f"{'same' if same else 'DIFFERENT':9} report.json {name}: mAP {e.get('map', 0):.2f} -> "
            f"{ra.get(name, {}).get('map', float('nan')):.2f}"
        )
    for name in sorted(set(ra) - set(rb)):
        print(f"{'new':9} report.json {name}: mAP {ra[name].get('map', float('nan')):.2f}")
    print("unchanged apart from timings" if not bad else f"{bad} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
