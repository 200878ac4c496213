"""torchrun + DistributedDataParallel plumbing: the process group, devices, SyncBatchNorm, loss normalisers.

One process per rank, started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``). Without those variables everything here is a no-op world of one.
NCCL on CUDA, Gloo on CPU, with a collective timeout (``train.timeout_s``) so a lost rank ends the
job instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from edgefpn.config import Config
from edgefpn.errors import ConfigError, EdgefpnError

__all__ = [
    "Dist",
    "PeerLost",
    "CPUSyncBatchNorm",
    "convert_sync_batchnorm",
    "globalise_fcos_loss",
    "is_peer_failure",
    "resolve_device",
    "setup",
    "wrap_for_ranks",
]


class PeerLost(EdgefpnError):
    """A collective failed because another rank died or timed out.

    A consequence, not a cause: the CLI does not print it (the failing rank prints its own line, or
    torchrun's summary names the rank that was killed), so a failed job shows one cause, not one per rank.
    """

    exit_code = 1
    quiet_in_distributed = True


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because of another rank (closed socket, timeout)."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Timed out")
    )


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    launched: bool = False  # started by torchrun: a process group exists (even with one rank)
    previous_sigterm: Any = None  # restored by teardown

    @property
    def enabled(self) -> bool:
        return self.launched

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a (detached) tensor."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        return value / self.world_size


def world_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not under torchrun."""
    try:
        return (
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK: not integers ({exc})") from None


def resolve_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``train.device`` -> a torch device; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: {spec!r} asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}; use train.device=cpu or auto)"
        )
    if spec == "cuda":
        index = local_rank if world_size > 1 else 0
    elif world_size > 1:
        raise ConfigError(
            f"train.device: {spec!r} names one GPU, but torchrun started {world_size} ranks; "
            "use cuda or auto (each rank takes cuda:LOCAL_RANK)"
        )
    else:
        index = int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: cuda:{index} does not exist ({torch.cuda.device_count()} CUDA devices)"
        )
    return torch.device("cuda", index)


def setup(cfg: Config) -> Dist:
    """Start the process group when torchrun started this process; pick the device."""
    rank, world, local_rank = world_from_env()
    device = resolve_device(cfg.train.device, local_rank, world)
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # a plain process, not started by torchrun
        return Dist(device=device)
    if cfg.train.batch_size % world:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is the global batch and must divide "
            f"by the world size {world} (each rank takes batch_size / world_size)"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=cfg.train.timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    # torchrun's agent stops the surviving ranks with SIGTERM when one fails: exit quietly, but through
    # the normal unwinding, so a half-written artifact's temporary folder is removed.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return Dist(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=device,
        launched=True,
        previous_sigterm=previous,
    )


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def teardown(dist: Dist) -> None:
    if not dist.enabled:
        return
    # once the stage is over (even by an error), a SIGTERM just ends the process: an exception raised
    # while the interpreter shuts down would only print a traceback
    signal.signal(
        signal.SIGTERM, dist.previous_sigterm if dist.previous_sigterm is not None else signal.SIG_DFL
    )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# SyncBatchNorm that also runs on CPU (Gloo)


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """SyncBatchNorm for CPU tensors (torch's ``nn.SyncBatchNorm`` and DDP refuse them; CUDA uses torch's).

    The batch statistics are two differentiable all-reduces (sum, then the centred sum of
    squares: the same two-pass form as single-process BatchNorm, so 2 ranks x 2 images give the loss
    of 1 rank x 4 images to float rounding). Running statistics update as ``F.batch_norm`` does
    (unbiased variance, ``momentum``). State-dict keys are BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or not torch.distributed.is_initialized()
            or torch.distributed.get_world_size() == 1
        ):
            return super().forward(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        xf = x.float()  # statistics in float32 under bf16/fp16 autocast
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=torch.float32)
        totals = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if (
            self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
            and self.num_batches_tracked is not None
        ):
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """A differentiable sum over ranks: every rank's result depends on every rank's input, so the
    gradient of the sum of all ranks' losses w.r.t. one input is the sum over ranks of the incoming
    gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every trainable BatchNorm of ``module`` synchronised across ranks (same weights and buffers).

    CUDA: torch's ``nn.SyncBatchNorm``. CPU: :class:`CPUSyncBatchNorm` (2d only: the backbones' kind).
    torchvision's ``FrozenBatchNorm2d`` is not a ``_BatchNorm`` and stays as it is; GroupNorm needs nothing.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


# ---------------------------------------------------------------------------------------------------
# Loss normalisers: the same optimisation at every world size


def globalise_fcos_loss(model: nn.Module, world_size: int) -> None:
    """Make torchvision's FCOS loss use the global foreground count, as detectron2's FCOS does.

    ``FCOSHead.compute_loss`` divides each loss sum by the number of foreground points of *its*
    batch. With the batch split across ranks that count differs per rank, and DDP's gradient mean
    would no longer be the single-process gradient. Here each rank's losses are rescaled to
    ``world_size * S_r / N_global`` (``S_r``: the rank's loss sums, ``N_global``: the all-reduced
    foreground count), so the mean over ranks, which is what DDP averages and what is logged, is
    exactly the single-process ``sum_r S_r / N_global``.

    (RetinaNet needs nothing: it normalises per image and averages over images, and every rank holds
    the same number of images. Faster R-CNN samples its RPN/RoI anchors from torch's RNG, so its
    ranks are statistically, not bitwise, equivalent to one process.)
    """
    head = cast(Any, model.head)  # torchvision's FCOSHead: untyped
    original: Callable[..., dict[str, torch.Tensor]] = head.compute_loss

    def compute_loss(targets, head_outputs, anchors, matched_idxs):  # noqa: ANN001, ANN202 (torchvision's)
        # torchvision counts foreground as matched_idxs >= 0 over the batch (images without boxes: all -1)
        local = sum(int((m >= 0).sum()) for m in matched_idxs)
        count = torch.tensor([float(local)], device=matched_idxs[0].device)
        torch.distributed.all_reduce(count)
        scale = world_size * max(1, local) / max(1.0, float(count.item()))
        return {k: v * scale for k, v in original(targets, head_outputs, anchors, matched_idxs).items()}

    head.compute_loss = compute_loss


def wrap_for_ranks(cfg: Config, module: nn.Module, dist: Dist) -> tuple[nn.Module, nn.Module]:
    """``(module, model)``: the detector to save and the one to train. Under torchrun each rank draws from
    its own seed, BatchNorm is synchronised (unless ``train.sync_bn`` is false), FCOS's loss normaliser
    is global and ``model`` is its ``DistributedDataParallel``; in one process both are ``module``."""
    from edgefpn.pipeline.common import log

    t = cfg.train
    model = module
    if dist.enabled:
        torch.manual_seed(cfg.run.seed + dist.rank)  # what a model draws while training differs per rank
        if t.sync_bn is not False:
            module = convert_sync_batchnorm(module, dist.device)
        if cfg.model.arch == "fcos":
            globalise_fcos_loss(module, dist.world_size)
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    elif t.sync_bn:
        log("[train] train.sync_bn: one process, plain BatchNorm is the same thing")
    return module, model
