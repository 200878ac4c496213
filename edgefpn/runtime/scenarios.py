"""Named benchmark scenarios, each an FPS with the conditions it ran under. Torch-free.

Shared by ``edgefpn benchmark`` (every engine of a run) and ``python -m edgefpn.runtime bench`` (the
bundle's engine on the device). What each figure means is :data:`FPS_DEFINITIONS`; two FPS figures are
never shown without their :func:`edgefpn.runtime.conditions.run_conditions`.

* ``single_stream``: one image per call, one request, back to back (MLPerf single-stream; what a loop
  over one camera gets when nothing overlaps): batch-1 latency p50/p90/p99, model-only and end to end.
* ``offline``: the best model-only throughput over requests in flight, streams and batch (MLPerf
  offline; benchmark_app's async throughput; trtexec's throughput with ``--infStreams``).
  OpenVINO: ``AsyncInferQueue`` with N requests on a THROUGHPUT-hint model compiled with S streams.
  ONNX Runtime and TensorRT: N runners (sessions, or execution contexts on their own CUDA streams) on
  N Python threads, the cores split between them; both release the GIL while they compute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgefpn.backends.base import EngineSpec
from edgefpn.runtime.conditions import run_conditions

__all__ = [
    "FPS_DEFINITIONS",
    "batched",
    "latency_stats",
    "offline",
    "offline_point",
    "single_stream",
    "time_calls",
]

FPS_DEFINITIONS: Mapping[str, str] = {
    "single_stream": "1000 / mean latency of one image per call, one request, calls back to back (MLPerf "
    "single-stream reports its p90 latency; benchmark_app -hint latency -api sync; "
    "trtexec with --infStreams=1 and no batch); end to end adds decode, letterbox and NMS.",
    "streaming": "frames out per second of the pipelined runtime (`python -m edgefpn.runtime stream`) on a "
    "video: decode, preprocess, inference and NMS overlapped, counted at the output after "
    "NMS (DeepStream's per-stream FPS; what an application on one camera gets).",
    "offline": "images per second through the engine alone with the best requests in flight, streams and "
    "batch found by the sweep (MLPerf offline; benchmark_app's async throughput; trtexec's "
    "throughput: inferences x batch / host wall time with work queued ahead); no decode or NMS.",
}

OpenRunner = Callable[..., Any]  # (spec, *, threads) -> an unentered Runner with ``batch`` after entry


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)} | {
        "mean": round(float(arr.mean()), 3),
        "samples": len(arr),
    }


def time_calls(call: Callable[[int], object], *, warmup: int, iters: int) -> list[float]:
    """``iters`` timed calls ``call(i)`` (ms) after ``warmup`` untimed ones."""
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(iters):
        t0 = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def single_stream(
    model_only_ms: Sequence[float],
    *,
    threads: int,
    batch: int = 1,
    end_to_end_ms: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``single_stream`` record from timed calls: ``fps`` = 1000 / mean model-only latency."""
    mo = latency_stats(model_only_ms)
    row: dict[str, Any] = {"fps": round(1000.0 * batch / mo["mean"], 2), "model_only_ms": mo}
    if end_to_end_ms:
        e2e = latency_stats(end_to_end_ms)
        row["end_to_end_ms"] = e2e
        row["end_to_end_fps"] = round(1000.0 / e2e["mean"], 2)
    row.update(extra)
    row["conditions"] = run_conditions(threads=threads, streams=1, requests=1, batch=batch)
    return row


def batched(feed: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """A batch-1 feed (float ``images`` or uint8 ``images_u8`` + ``valid_hw``) repeated to ``batch``."""
    return {k: np.ascontiguousarray(np.repeat(v[:1], batch, axis=0)) for k, v in feed.items()}


def _openvino_point(
    spec: EngineSpec,
    feed: Mapping[str, np.ndarray],
    *,
    threads: int,
    seconds: float,
    streams: int | None,
    requests: int | None,
) -> dict[str, Any]:
    """OpenVINO: THROUGHPUT hint, ``streams`` (None: the plugin's choice), ``requests`` in an
    AsyncInferQueue."""
    import openvino as ov

    from edgefpn.backends.openvino import ir_xml, shared_core

    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if streams is not None:
        config["NUM_STREAMS"] = streams
    compiled = shared_core().compile_model(str(ir_xml(spec.path)), "CPU", config)
    nireq = requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    batch = int(compiled.input(0).get_partial_shape()[0].get_length())
    feed_n = batched(feed, batch)
    queue = ov.AsyncInferQueue(compiled, nireq)
    for _ in range(nireq):  # warm every request once
        queue.start_async(feed_n, share_inputs=True)
    queue.wait_all()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async(feed_n, share_inputs=True)  # blocks while every request is busy
        done += 1
    queue.wait_all()
    elapsed = time.perf_counter() - t0
    used = int(compiled.get_property("NUM_STREAMS"))
    return _point(
        done,
        batch,
        elapsed,
        "openvino THROUGHPUT hint, AsyncInferQueue" + ("" if streams else " (plugin's streams)"),
        run_conditions(threads=threads, streams=used, requests=nireq, batch=batch),
    )


def _threaded_point(
    spec: EngineSpec,
    feed: Mapping[str, np.ndarray],
    *,
    threads: int,
    seconds: float,
    requests: int,
    open_runner: OpenRunner,
) -> dict[str, Any]:
    """``requests`` runners on as many threads, ``threads // requests`` cores each, all kept busy."""
    per = max(1, threads // requests)
    runners = [open_runner(spec, threads=per) for _ in range(requests)]
    entered = []
    try:
        for r in runners:
            entered.append(r.__enter__())
        batch = getattr(entered[0], "batch", None) or 1
        feed_n = batched(feed, batch)
        for r in entered:
            r.infer(feed_n)
        counts = [0] * requests
        start = threading.Barrier(requests + 1)
        deadline: list[float] = []
        ends = [0.0] * requests
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                start.wait()
                while time.perf_counter() < deadline[0]:
                    entered[i].infer(feed_n)
                    counts[i] += 1
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
            ends[i] = time.perf_counter()

        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(requests)]
        for w in workers:
            w.start()
        t0 = time.perf_counter()
        deadline.append(t0 + seconds)
        start.wait()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        elapsed = max(ends) - t0
    finally:
        for r in entered:
            r.__exit__(None, None, None)
    return _point(
        sum(counts),
        batch,
        elapsed,
        f"{requests} {spec.backend} runner(s) on {requests} thread(s)",
        run_conditions(threads=per * requests, streams=requests, requests=requests, batch=batch),
    )


def _point(done: int, batch: int, elapsed: float, mode: str, conditions: dict[str, Any]) -> dict[str, Any]:
    """One offline point: ``done`` inferences of ``batch`` images in ``elapsed`` seconds."""
    return {
        "fps": round(done * batch / elapsed, 2),
        "inferences": done,
        "seconds": round(elapsed, 3),
        "mode": mode,
        "conditions": conditions,
    }


def offline_point(
    spec: EngineSpec,
    feed: Mapping[str, np.ndarray],
    *,
    threads: int,
    seconds: float,
    streams: int | None,
    requests: int | None,
    open_runner: OpenRunner,
) -> dict[str, Any]:
    """One point of the offline sweep: ``seconds`` of back-to-back inferences with ``requests`` in flight
    (the backend's own async requests where its throughput mode is ``requests``, else runners on threads)."""
    if _throughput(spec.backend) == "requests":
        return _openvino_point(
            spec, feed, threads=threads, seconds=seconds, streams=streams, requests=requests
        )
    return _threaded_point(
        spec, feed, threads=threads, seconds=seconds, requests=requests or 1, open_runner=open_runner
    )


def _throughput(backend: str) -> str:
    from edgefpn.backends import BACKENDS

    record = BACKENDS.get(backend)
    return "serial" if record is None else record.throughput


def sweep_points(backend: str, threads: int) -> list[tuple[int | None, int | None]]:
    """(streams, requests) to try: one request; then several, up to one stream per core, 2 requests each
    (one request only for a backend whose throughput mode is ``serial``)."""
    mode = _throughput(backend)
    if mode == "serial":
        return [(1, 1)]
    if mode == "requests":
        points: list[tuple[int | None, int | None]] = [(None, None), (1, 1), (1, 2)]
        if threads >= 2:
            points += [(2, 2), (2, 4)]
        return points
    return [(n, n) for n in (1, 2, 4) if n <= max(threads, 2)]


def offline(
    specs: Sequence[EngineSpec],
    feed: Mapping[str, np.ndarray],
    *,
    threads: int,
    seconds: float,
    open_runner: OpenRunner,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The ``offline`` record: every sweep point of every engine in ``specs`` (one per batch), and the best.

    ``fps`` and ``conditions`` are the best point's; ``sweep`` keeps every point with its own conditions.
    """
    sweep = []
    for spec in specs:
        for streams, requests in sweep_points(spec.backend, threads):
            point = offline_point(
                spec,
                feed,
                threads=threads,
                seconds=seconds,
                streams=streams,
                requests=requests,
                open_runner=open_runner,
            )
            c = point["conditions"]
            log(
                f"  offline {spec.name} batch {c['batch']} streams {c['streams']} requests {c['requests']}: "
                f"{point['fps']:.1f} img/s"
            )
            sweep.append(point | {"engine_path": str(spec.path)})
    best = max(sweep, key=lambda p: p["fps"])
    return {"fps": best["fps"], "mode": best["mode"], "conditions": best["conditions"], "sweep": sweep}
