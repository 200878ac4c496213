"""Engine calls with several requests in flight, for the streaming runtime (:mod:`.stream`).

One small interface per backend: ``submit(feed, done)`` starts one call on a feed (input name -> array
of the engine's batch: ``images`` float or ``images_u8`` + ``valid_hw``) and returns at once unless all
``requests`` are busy (then it blocks: backpressure); ``done`` is later called, on some worker thread,
with the output dict (the runner's names and arrays) or the exception.

- OpenVINO: one InferRequest per worker thread on the runner's compiled model (sync calls; see
  :class:`_OpenVinoEngine` for why not ``AsyncInferQueue``).
- ONNX Runtime: ``InferenceSession.run`` is thread-safe, so ``requests`` threads share the session.
- TensorRT: one execution context per request on one deserialized engine, each with its own CUDA
  stream and device buffers (TensorRT 10 tensor API, ``execute_async_v3``); pinned host staging.
- Any other runner: its own ``infer``, one call at a time, on a worker thread.
Backends are imported lazily; nothing here imports torch unless a TensorRT engine is streamed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["default_requests", "open_engine"]

Done = Callable[[Any], None]  # called with dict[str, np.ndarray] or a BaseException
Feed = dict[str, np.ndarray]  # input name -> array of the engine's batch


class _ThreadedEngine:
    """``requests`` worker threads calling ``infer`` (thread-safe for ONNX Runtime; 1 otherwise)."""

    def __init__(self, infer: Callable[[Feed], dict[str, np.ndarray]], requests: int) -> None:
        self.requests = requests
        self._infer = infer
        self._free = threading.Semaphore(requests)
        self._pool = ThreadPoolExecutor(max_workers=requests, thread_name_prefix="edgefpn-infer")

    def submit(self, feed: Feed, done: Done) -> None:
        self._free.acquire()
        self._pool.submit(self._run, feed, done)

    def _run(self, feed: Feed, done: Done) -> None:
        out: dict[str, np.ndarray] | BaseException
        try:
            out = self._infer(feed)
        except BaseException as exc:  # noqa: BLE001 - handed to `done`, re-raised by the stream
            out = exc
        try:
            done(out)
        finally:  # only after `done`: drain() returning means every result was handed over
            self._free.release()

    def drain(self) -> None:
        for _ in range(self.requests):
            self._free.acquire()
        for _ in range(self.requests):
            self._free.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _OpenVinoEngine(_ThreadedEngine):
    """``requests`` Python threads, each running a synchronous call on an InferRequest of its own from
    the runner's compiled model (compiled with the THROUGHPUT hint for streaming): a sync call releases
    the GIL, so the requests run in parallel on the model's streams.

    Not ``AsyncInferQueue``: its callbacks run Python on OpenVINO's executor threads, which then take
    the GIL. With OpenVINO 2026.4 that made about one stream in five end badly when the compiled model
    was released: destroyed on its own executor thread (std::system_error from joining itself: abort),
    or destroyed on the main thread, holding the GIL, while an executor thread waited for the GIL
    (deadlock). Here no OpenVINO thread ever runs Python."""

    def __init__(self, runner: Any, requests: int) -> None:
        compiled = runner.compiled
        self._names = [port.get_any_name() for port in compiled.outputs]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(requests):
            self._idle.put(compiled.create_infer_request())
        super().__init__(self._infer_one, requests)

    def _infer_one(self, feed: Feed) -> dict[str, np.ndarray]:
        request = self._idle.get()  # one per worker thread: at most `requests` calls run at once
        try:
            # share_inputs: the request reads the arrays in place (the dtypes prepare made)
            request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()}, share_inputs=True)
            # copied: the request's output tensors are overwritten by its next call
            return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self._names)}
        finally:
            self._idle.put(request)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # no call left on a request
        while not self._idle.empty():  # released here, on the closing thread
            self._idle.get()


class _TensorRTEngine:
    """One execution context, CUDA stream and set of device buffers per request, on one engine."""

    def __init__(self, runner: Any, requests: int) -> None:
        import tensorrt as trt
        import torch

        engine = runner._engine  # deserialized (and checked against this GPU) by TensorRTRunner
        if engine is None:
            raise RuntimeError("TensorRT engine streamed outside its runner's context")
        self.requests = requests
        self._slots: queue.Queue = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=requests, thread_name_prefix="edgefpn-trt")
        for _ in range(requests):
            context = engine.create_execution_context()
            slot = {"context": context, "stream": torch.cuda.Stream(), "in": {}, "out": {}}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                shape = tuple(engine.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
                device = torch.empty(shape, dtype=dtype, device="cuda")
                host = torch.empty(shape, dtype=dtype, pin_memory=True)  # async copies need pinned memory
                context.set_tensor_address(name, device.data_ptr())
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                slot["in" if is_input else "out"][name] = (device, host)
            self._slots.put(slot)

    def submit(self, feed: Feed, done: Done) -> None:
        slot = self._slots.get()  # blocks while every context is busy
        self._pool.submit(self._run, slot, feed, done)

    def _run(self, slot: dict, feed: Feed, done: Done) -> None:
        import torch

        try:
            stream = slot["stream"]
            with torch.cuda.stream(stream):
                for name, (device, host) in slot["in"].items():  # images, or images_u8 + valid_hw
                    host.copy_(torch.from_numpy(np.ascontiguousarray(feed[name])).to(host.dtype))
                    device.copy_(host, non_blocking=True)
                if not slot["context"].execute_async_v3(stream.cuda_stream):
                    raise RuntimeError("TensorRT execution failed")
                for device, host in slot["out"].values():
                    host.copy_(device, non_blocking=True)
            stream.synchronize()
            out: Any = {  # float outputs as float32; an e2e engine's labels and counts stay integers
                name: (host.float() if host.is_floating_point() else host).numpy().copy()
                for name, (_, host) in slot["out"].items()
            }
        except BaseException as exc:  # noqa: BLE001
            out = exc
        try:
            done(out)
        finally:  # only after `done` (as above): drain() returning means every result was handed over
            self._slots.put(slot)

    def drain(self) -> None:
        slots = [self._slots.get() for _ in range(self.requests)]
        for slot in slots:
            self._slots.put(slot)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def default_requests(stages: Any) -> int:
    """Requests in flight when the caller names none. OpenVINO: twice what the compiled model asks for
    (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``: one per stream under the THROUGHPUT hint), so that each
    stream has a request queued behind the running one and never waits on the host (trtexec's "one
    batch queued ahead"; on the default model 4 requests streamed ~5% more frames than 2). 2 elsewhere."""
    compiled = getattr(stages.runner, "compiled", None)
    if compiled is not None:
        return max(2, 2 * int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    return 2


def open_engine(stages: Any, *, requests: int) -> Any:
    """The in-flight engine for ``stages.runner`` (:class:`edgefpn.runtime.FrameStages`)."""
    from edgefpn.backends import BACKENDS

    name = getattr(getattr(stages.runner, "spec", None), "backend", None)
    record = BACKENDS.get(name) if isinstance(name, str) else None
    mode = "serial" if record is None else record.throughput  # unknown runner: not assumed thread-safe
    if mode == "requests" and getattr(stages.runner, "compiled", None) is not None:
        return _OpenVinoEngine(stages.runner, requests)
    if mode == "cuda-streams":
        return _TensorRTEngine(stages.runner, requests)
    return _ThreadedEngine(stages.infer, requests if mode == "threads" else 1)
