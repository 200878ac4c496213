"""``python -m edgefpn.runtime {infer,stream,bench}``: the device command line (argparse; no click, no torch).

Errors are one line on stderr (``error: <file>: <problem>``) and the exit code of the edgefpn error.
``stream`` exits 130 after Ctrl-C (SIGINT), once what was captured is processed and written out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from pathlib import Path

from edgefpn.errors import EdgefpnError


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract: ``error: <flag>: <problem>``, exit 2, no usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> typing.Callable[[str], int]:
    """An argparse type: an integer >= ``low``, checked before anything is opened or loaded."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m edgefpn.runtime",
        description="Run an edgefpn engine bundle (bundle.tar) on this device.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--bundle", type=Path, required=True, help="bundle.tar made by `edgefpn package`")
    common.add_argument("--engine", default=None, help="engine name (default: the best this device can run)")
    common.add_argument(
        "--extract-to",
        type=Path,
        default=None,
        help="folder to extract the verified bundle into (default: a temporary folder)",
    )
    common.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=os.cpu_count() or 1,
        help="intra-op threads of the engine (default: every core)",
    )
    infer = sub.add_parser("infer", parents=[common], help="detections for a folder of images")
    infer.add_argument("--images", type=Path, required=True, help="folder of images")
    infer.add_argument("--out", type=Path, default=None, help="write detections JSON here (default: stdout)")
    stream = sub.add_parser(
        "stream",
        parents=[common],
        help="detections for video / camera / image-folder streams, pipelined (JSON lines)",
    )
    stream.add_argument(
        "--source",
        action="append",
        required=True,
        help="image folder, video file, camera index or rtsp:// / http(s):// URL (repeat for "
        "several streams)",
    )
    stream.add_argument("--out", type=Path, required=True, help="write one JSON line per frame here")
    stream.add_argument(
        "--requests",
        type=_int_at_least(1),
        default=None,
        help="engine calls in flight (default: OpenVINO's optimal number, at least 2; else 2)",
    )
    stream.add_argument(
        "--hint",
        choices=("throughput", "latency"),
        default="throughput",
        help="OpenVINO performance hint (default throughput: several streams, requests in flight)",
    )
    stream.add_argument(
        "--queue",
        type=_int_at_least(1),
        default=4,
        help="prepared frames waiting for the engine, across streams (default 4)",
    )
    stream.add_argument(
        "--drop-late",
        action="store_true",
        help="drop (and count) a frame that finds the queue full instead of waiting for it",
    )
    stream.add_argument(
        "--pace-fps",
        type=float,
        default=None,
        help="release each source's frames no faster than this (replays a file as a live camera)",
    )
    bench = sub.add_parser("bench", parents=[common], help="start-up and latency of the chosen engine")
    bench.add_argument("--iters", type=_int_at_least(1), default=50)
    bench.add_argument("--warmup", type=_int_at_least(0), default=5)
    bench.add_argument(
        "--images",
        type=Path,
        default=None,
        help="also time end-to-end on these images, one by one and streamed (as a video)",
    )
    bench.add_argument(
        "--eval-score-thresh",
        type=float,
        default=None,
        help="also stream at this score threshold (the evaluation one; the bundle's is the deploy one)",
    )
    bench.add_argument(
        "--stream-frames",
        type=_int_at_least(1),
        default=1000,
        help="frames of the streamed video: whole passes over --images, at least this many",
    )
    bench.add_argument(
        "--offline-seconds",
        type=float,
        default=3.0,
        help="seconds per point of the offline sweep (requests x streams); 0 skips it",
    )
    return p


def _infer(args: argparse.Namespace) -> None:
    from edgefpn.artifacts import atomic_write_text
    from edgefpn.ownership import check_detections_file
    from edgefpn.runtime import BundleSession, detections_to_records, list_images

    if args.out is not None:  # before any work: --out replaces only a detections file edgefpn wrote
        check_detections_file(args.out, "--out")
    paths = list_images(args.images)
    records: list[dict] = []
    with BundleSession(
        args.bundle, extract_to=args.extract_to, engine=args.engine, threads=args.threads
    ) as s:
        for path in paths:
            records.extend(detections_to_records(s.detect(path), path.name, s.category_ids))
    text = json.dumps(records, indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        check_detections_file(args.out, "--out")  # again: something may have appeared there meanwhile
        atomic_write_text(args.out, text)
        print(f"[runtime] {len(records)} detections on {len(paths)} images -> {args.out}", file=sys.stderr)


def _stats(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "mean": round(float(a.mean()), 3),
        "samples": len(ms),
    }


def _bench(args: argparse.Namespace) -> None:
    import numpy as np

    from edgefpn.runtime import BundleSession, list_images, open_runner, scenarios

    t0 = time.perf_counter()
    with BundleSession(
        args.bundle, extract_to=args.extract_to, engine=args.engine, threads=args.threads
    ) as s:
        h, w = s.prepost.input_size
        feed, _ = s.prepost.feed_image(np.zeros((h, w, 3), np.uint8))  # in the engine's contract
        s.runner.infer(feed)
        first = time.perf_counter() - t0
        for _ in range(args.warmup):
            s.runner.infer(feed)
        model_only = []
        for _ in range(args.iters):
            t = time.perf_counter()
            s.runner.infer(feed)
            model_only.append((time.perf_counter() - t) * 1e3)
        result = {
            "engine": s.spec.name,
            "threads": args.threads,
            "startup_s": {k: round(v, 4) for k, v in s.timings_s.items()}
            | {"to_first_inference": round(first, 4)},
            "model_only_ms": _stats(model_only),
        }
        if args.images is not None:
            paths = list_images(args.images)
            e2e = []
            for i in range(args.iters):
                t = time.perf_counter()
                s.detect(paths[i % len(paths)])
                e2e.append((time.perf_counter() - t) * 1e3)
            result["end_to_end_ms"] = _stats(e2e)
            from edgefpn.runtime.scenario import bench_streaming

            streaming = bench_streaming(
                s.spec,
                s.prepost,
                paths,
                threads=args.threads,
                eval_score_thresh=args.eval_score_thresh,
                min_frames=args.stream_frames,
            )
        # the named scenarios of `edgefpn benchmark`, each with the conditions it ran under
        batch = s.runner.batch or 1
        result["scenarios"] = {
            "single_stream": scenarios.single_stream(
                model_only,
                threads=args.threads,
                batch=batch,
                end_to_end_ms=e2e if args.images is not None else None,
            )
        }
        if args.offline_seconds > 0:  # fed in the engine's contract (float or uint8)
            result["scenarios"]["offline"] = scenarios.offline(
                [s.spec],
                feed,
                threads=args.threads,
                seconds=args.offline_seconds,
                open_runner=open_runner,
                log=lambda m: print(f"[runtime] {m.strip()}", file=sys.stderr),
            )
        if args.images is not None:
            result["scenarios"]["streaming"] = streaming
        result["definitions"] = dict(scenarios.FPS_DEFINITIONS)
    print(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "stream":
            from edgefpn.runtime.stream_cli import stream_command

            return stream_command(args)
        (_infer if args.command == "infer" else _bench)(args)
    except EdgefpnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
