"""``python -m edgefpn.runtime stream``: the streaming runtime on a bundle, one JSON line per frame.

Each line: ``{"stream", "source", "frame", "file_name", "latency_ms", "detections"}``; ``detections`` are
the records of ``infer`` (file_name, category_id, bbox [x, y, w, h], score), ``latency_ms`` is capture to
detection. Lines come in frame order. The file is written beside ``--out`` and renamed into place when
the run ends: at the end of the streams, after Ctrl-C (exit 130) and after a source failed (its
``error:`` line, exit 2), with every frame processed up to then.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from edgefpn.errors import DataError

__all__ = ["STREAM_KEYS", "stream_command"]

STREAM_KEYS = frozenset({"stream", "source", "frame", "file_name", "latency_ms", "detections"})
_MAX_BYTES = 1 << 30


def _stream_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a JSON-lines file this command wrote (None: it is)."""
    try:
        if path.stat().st_size > _MAX_BYTES:
            return "too large to be one"
        lines = path.read_text(encoding="utf-8").splitlines()
        if all(isinstance(r := json.loads(line), dict) and set(r) == STREAM_KEYS for line in lines):
            return None
    except (OSError, ValueError):
        pass
    return "not an edgefpn stream detections file"


def stream_command(args: argparse.Namespace) -> int:
    from edgefpn.ownership import check_replaceable
    from edgefpn.runtime import BundleSession, detections_to_records
    from edgefpn.runtime.sources import open_source
    from edgefpn.runtime.stream import run_stream

    def check_out() -> None:  # --out replaces only a stream file edgefpn wrote
        check_replaceable(
            args.out,
            what="an edgefpn stream detections file (JSON lines)",
            problem=_stream_file_problem,
            folder=False,
            option="--out",
        )

    check_out()
    if args.pace_fps is not None and not args.pace_fps > 0:
        raise DataError(f"--pace-fps: must be > 0, got {args.pace_fps}")
    stop = threading.Event()

    def on_sigint(*_: object) -> None:  # finish what was captured; a second Ctrl-C stops at once
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # signal handlers can only be set from the main thread (a caller may run this from another)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    try:
        sources = [open_source(spec, pace_fps=args.pace_fps) for spec in args.source]
        with (
            BundleSession(
                args.bundle,
                extract_to=args.extract_to,
                engine=args.engine,
                threads=args.threads,
                hint=args.hint,
            ) as s,
            open(tmp, "w", encoding="utf-8") as f,
        ):

            def on_frame(r) -> None:
                fr = r.frame
                f.write(
                    json.dumps(
                        {
                            "stream": fr.source,
                            "source": sources[fr.source].name,
                            "frame": fr.index,
                            "file_name": fr.name,
                            "latency_ms": round(r.latency_ms, 3),
                            "detections": detections_to_records(r.detections, fr.name, s.category_ids),
                        }
                    )
                    + "\n"
                )
                if fr.index == 0 and fr.source == 0:
                    print(
                        f"[stream] first frame out after {r.latency_ms:.1f} ms", file=sys.stderr, flush=True
                    )

            stats = run_stream(
                s.stages,
                sources,
                on_frame,
                requests=args.requests,
                queue_size=args.queue,
                drop_late=args.drop_late,
                stop=stop,
            )
        check_out()  # again: something may have appeared there meanwhile
        os.replace(tmp, args.out)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        tmp.unlink(missing_ok=True)
    summary = stats.summary()
    print(
        f"[stream] {summary['frames']} frames from {len(sources)} stream(s) -> {args.out}: {summary['fps']} "
        f"FPS, latency p50 {summary['latency_ms']['p50']} ms p99 {summary['latency_ms']['p99']} ms, "
        f"{summary['dropped']} dropped; per stream {json.dumps(summary['streams'])}",
        file=sys.stderr,
    )
    for error in stats.errors:
        print(f"error: {error}", file=sys.stderr)
    if stats.errors:
        return DataError.exit_code
    if stats.interrupted:
        print("[stream] interrupted: what was captured is written out", file=sys.stderr)
        return 130
    return 0
