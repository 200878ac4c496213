"""The streaming runtime: frames from sources through prepare -> infer -> decode, overlapped.

Threads and queues (every queue bounded, so a slow stage holds the ones before it back)::

    reader per source (decode + prepare: the engine's feed, float or uint8) -> [frames, queue_size]
    -> submitter (batches of the engine's N) -> engine, ``requests`` in flight -> decode workers
    (decode + NMS) -> writer (the calling thread: frame order)

- Frame order: the submitter numbers frames as it takes them; the writer hands them to ``on_frame``
  strictly in that order (one source: capture order).
- Backpressure: at most ``window`` batches are between the submitter and the writer; a reader blocks
  on the full frame queue, so a file source is read no faster than it is processed. With
  ``drop_late`` a reader drops a frame that finds the queue full instead (counted per stream): what a
  live camera needs when the engine cannot keep up.
- ``stop`` (an Event, set by Ctrl-C in the CLI) ends every source at its next frame; what was captured
  is still processed and handed over, then :func:`run_stream` returns.
- A source that fails (:class:`~edgefpn.runtime.sources.SourceError`) ends that stream; its earlier
  frames stand and the error is in the returned stats. Any other failure is re-raised.

The per-frame work is :class:`edgefpn.runtime.FrameStages` (the runtime's one path, split); only the
engine call changes with the backend, to keep several requests in flight (:mod:`.engines`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefpn.runtime.engines import default_requests, open_engine
from edgefpn.runtime.sources import Frame, Source, SourceError

__all__ = ["FrameResult", "StreamStats", "run_stream"]

_END = object()


@dataclass
class FrameResult:
    frame: Frame  # ``image`` is released (None) once the frame is prepared
    detections: Any  # edgefpn.postprocess.Detections
    done: float  # perf_counter when its detections were decoded

    @property
    def latency_ms(self) -> float:
        """Capture to detection."""
        return (self.done - self.frame.captured) * 1e3


@dataclass
class _Stream:
    name: str
    frames: int = 0
    dropped: int = 0
    first: float | None = None
    last: float | None = None
    error: str | None = None

    def fps(self) -> float:
        """Frames out over first capture to last detection; 0 below two frames."""
        if self.frames < 2 or self.first is None or self.last is None:
            return 0.0
        return round(self.frames / max(self.last - self.first, 1e-9), 2)


@dataclass
class StreamStats:
    """What a run did: per-frame latencies (ms, output order), per-stream counts and FPS."""

    streams: list[_Stream]
    latencies_ms: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    interrupted: bool = False
    requests: int = 0  # engine calls that were allowed in flight

    @property
    def frames(self) -> int:
        return len(self.latencies_ms)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error]

    def summary(self) -> dict[str, Any]:
        """``fps`` (frames out over first capture to last detection), latency p50/p99, per stream."""
        lat = np.asarray(self.latencies_ms or [0.0])
        wall = max(self.finished - self.started, 1e-9)
        return {
            "fps": round(self.frames / wall, 2) if self.frames else 0.0,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p99": round(float(np.percentile(lat, 99)), 3),
            },
            "frames": self.frames,
            "dropped": sum(s.dropped for s in self.streams),
            "streams": [
                {
                    "source": s.name,
                    "frames": s.frames,
                    "dropped": s.dropped,
                    "fps": s.fps(),
                }
                | ({"error": s.error} if s.error else {})
                for s in self.streams
            ],
        } | ({"interrupted": True} if self.interrupted else {})


@dataclass
class _Batch:
    items: list[tuple[int, Frame, Any]]  # (seq, frame, letterbox)
    left: int = 0


@contextmanager
def _opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's own thread pool at ``n`` threads for the duration (process-wide, restored after).

    The readers are threads of their own already; OpenCV's pool would split each small decode, colour
    conversion and resize across the cores the engine is using, and its workers wait actively between
    jobs. Measured on the default model's 320 px val video with a no-op engine: 0.80 ms of host CPU
    per frame with OpenCV's default pool (2 threads here), 0.42 ms with 1."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@_opencv_threads(1)
def run_stream(
    stages: Any,
    sources: Sequence[Source],
    on_frame: Callable[[FrameResult], None],
    *,
    requests: int | None = None,
    queue_size: int = 4,
    drop_late: bool = False,
    decode_workers: int = 1,
    stop: threading.Event | None = None,
    batch_wait_s: float = 0.02,
) -> StreamStats:
    """Stream every source through ``stages`` (:class:`edgefpn.runtime.FrameStages`); ``on_frame`` gets
    each frame's result in frame order, on the calling thread.

    Args:
        requests: engine calls in flight at once (where the backend allows; else 1); default
            :func:`edgefpn.runtime.engines.default_requests`.
        queue_size: prepared frames waiting for the engine, across sources.
        drop_late: drop (and count) a frame that finds the queue full, instead of waiting.
        decode_workers: threads that decode outputs (NMS).
        stop: set it to end the sources early; the frames already captured are still finished.
        batch_wait_s: with an engine batch N > 1, how long a partial batch waits for more frames
            before it is run padded (a live source must not wait for N frames indefinitely).
    """
    requests = default_requests(stages) if requests is None else requests
    for name, value, low in (
        ("requests", requests, 1),
        ("queue_size", queue_size, 1),
        ("decode_workers", decode_workers, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    stop = stop or threading.Event()
    stats = StreamStats([_Stream(s.name) for s in sources])
    frames_q: queue.Queue = queue.Queue(maxsize=queue_size)
    decode_q: queue.Queue = queue.Queue()  # holds at most `window` batches (the semaphore below)
    window = threading.BoundedSemaphore(requests + decode_workers + 1)
    results: dict[int, tuple[FrameResult, _Batch]] = {}
    cond = threading.Condition()
    fatal: list[BaseException] = []
    submitted = [0, False]  # frames numbered, all submitted

    def fail(exc: BaseException) -> None:
        with cond:
            fatal.append(exc)
            cond.notify_all()
        stop.set()

    def read(i: int, source: Source) -> None:
        s = stats.streams[i]
        try:
            for frame in source.frames(i):
                item = (frame, *stages.prepare(frame.image))
                frame.image = None  # the model input is all that is needed from here on
                if drop_late:
                    try:
                        frames_q.put_nowait(item)
                    except queue.Full:
                        s.dropped += 1
                else:
                    frames_q.put(item)
                if stop.is_set():
                    break
        except SourceError as exc:
            s.error = str(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, re-raised there
            fail(exc)
        finally:
            source.close()
            frames_q.put(_END)

    engine = open_engine(stages, requests=requests)
    stats.requests = engine.requests

    delivered = [0]

    def deliver(batch: _Batch, res: Any) -> None:  # on the engine's thread
        decode_q.put((batch, res))
        with cond:
            delivered[0] += 1
            cond.notify_all()

    def submit() -> None:
        n, ended, seq, batches = stages.batch, 0, 0, 0
        try:
            while ended < len(sources) and not fatal:
                item = frames_q.get()
                if item is _END:
                    ended += 1
                    continue
                items = [item]
                while len(items) < n and ended < len(sources):  # fill the engine's batch
                    try:
                        more = frames_q.get(timeout=batch_wait_s)
                    except queue.Empty:
                        break
                    if more is _END:
                        ended += 1
                    else:
                        items.append(more)
                batch = _Batch([(seq + k, f, lb) for k, (f, _, lb) in enumerate(items)], len(items))
                seq += len(items)
                with cond:
                    submitted[0] = seq
                feed = stages.stack([x for _, x, _ in items])  # the engine's N, zero-padded
                window.acquire()  # blocks while `window` batches are not yet written out
                engine.submit(feed, lambda res, b=batch: deliver(b, res))
                batches += 1
            engine.drain()
            with cond:  # every result handed over before the decode workers are told to stop
                cond.wait_for(lambda: delivered[0] == batches or fatal)
        except BaseException as exc:  # noqa: BLE001
            fail(exc)
        finally:
            with cond:
                submitted[1] = True
                cond.notify_all()
            for _ in range(decode_workers):
                decode_q.put(None)

    def decode() -> None:
        while (job := decode_q.get()) is not None:
            batch, res = job
            try:
                if isinstance(res, BaseException):
                    raise res
                dets = stages.decode(res, [lb for _, _, lb in batch.items])
                done = time.perf_counter()
            except BaseException as exc:  # noqa: BLE001
                fail(exc)
                continue
            with cond:
                for (seq, frame, _), det in zip(batch.items, dets, strict=True):
                    results[seq] = (FrameResult(frame, det, done), batch)
                cond.notify_all()

    threads = [
        threading.Thread(target=read, args=(i, s), name=f"edgefpn-read-{i}", daemon=True)
        for i, s in enumerate(sources)
    ]
    threads += [threading.Thread(target=submit, name="edgefpn-submit", daemon=True)]
    threads += [
        threading.Thread(target=decode, name=f"edgefpn-decode-{k}", daemon=True)
        for k in range(decode_workers)
    ]
    stats.started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        _write(results, cond, fatal, submitted, window, stats, on_frame)
    except BaseException:
        stop.set()
        raise
    finally:
        stats.finished = time.perf_counter()
        stats.interrupted = stop.is_set() and not fatal
        for t in threads:
            t.join(timeout=0 if fatal else 30)
        engine.close()
    if fatal:
        raise fatal[0]
    if stats.streams and stats.latencies_ms:
        stats.started = min(s.first for s in stats.streams if s.first is not None)
    return stats


def _write(
    results: dict,
    cond: threading.Condition,
    fatal: list,
    submitted: list,
    window: threading.BoundedSemaphore,
    stats: StreamStats,
    on_frame: Callable[[FrameResult], None],
) -> None:
    """The writer: hand results over strictly in frame order; free a batch's window slot once its
    last frame is out."""
    nxt = 0
    while True:
        with cond:
            while nxt not in results and not fatal and not (submitted[1] and nxt >= submitted[0]):
                cond.wait()
            if fatal or nxt not in results:
                return
            result, batch = results.pop(nxt)
        on_frame(result)
        s = stats.streams[result.frame.source]
        s.frames += 1
        s.first = result.frame.captured if s.first is None else min(s.first, result.frame.captured)
        s.last = result.done
        stats.latencies_ms.append(result.latency_ms)
        batch.left -= 1
        if batch.left == 0:
            window.release()
        nxt += 1
