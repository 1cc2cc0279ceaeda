"""Data-parallel training under ``torchrun``: process group, per-network DDP, collectives.

``torchrun --nproc_per_node=N --no-python dmad teacher|search|finetune|compress ...`` starts N
copies of the same command with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. :func:`setup` joins
them into one process group (NCCL on CUDA, gloo on CPU) the first time a stage picks its
device; a plain ``dmad ...`` (no ``WORLD_SIZE``, or 1) never creates one and every helper here
is then the identity, so single-process runs are unchanged.

Why each network gets its own wrapper, rebuilt when its trainable set changes: a GAN step
backpropagates G and D separately and runs D frozen inside G's step, and the search freezes
mask weights as it goes. DDP expects exactly the parameters it was built with to receive
gradients in every backward; calling the raw module where its weights are frozen and rebuilding
the wrapper when ``requires_grad`` flips keeps that true without ``find_unused_parameters``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dmad.compress.errors import DmadError

T = TypeVar("T")


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise DmadError(f"WORLD_SIZE: {os.environ['WORLD_SIZE']!r} is not a number") from None


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when absent): known before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise DmadError(f"RANK: {os.environ['RANK']!r} is not a number") from None


def active() -> bool:
    """True inside a multi-process run (a process group exists)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the only process that writes files, logs and progress."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this rank when its launcher (the torchrun agent) dies.

    torchrun starts each rank in a session of its own, so ``kill -9`` of torchrun, or of its
    process group, leaves the ranks running as orphans: they would go on training, hold the run
    folder's lock and finish the run behind the user's back. With this, killing the launcher
    kills the job, and ``--resume`` continues it exactly from the last checkpoint (written
    atomically, so a SIGKILL at any moment loses at most the steps since it)."""
    if not os.environ.get("TORCHELASTIC_RUN_ID") or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


def setup(device: torch.device) -> torch.device:
    """Join the torchrun process group (once) and return this rank's device.

    ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); CPU runs use gloo. A no-op
    returning ``device`` for a single process."""
    if env_world_size() <= 1:
        return device
    die_with_launcher()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(minutes=30))
        except (RuntimeError, ValueError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise DmadError(f"torchrun: cannot join the process group ({msg})") from None
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def teardown(finished: bool) -> None:
    """Leave the process group before the interpreter exits.

    A rank that exits with gloo's worker threads still alive can die in C++ with "terminate
    called without an active exception" (SIGABRT) after all of its work is done, failing a run
    that succeeded. A finished run first waits for its peers, so no rank tears down a
    connection another still reads from; a failed one leaves at once (its peers may never
    arrive)."""
    if not active():
        return
    try:
        if finished:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (e.g. writing the default dataset) and give every rank its
    result; a DmadError on rank 0 is raised on every rank, so none waits for a peer that quit."""
    if not active():
        return fn()
    box: list[Any] = [None, None]
    if is_main():
        try:
            box = [fn(), None]
        except DmadError as exc:
            box = [None, str(exc)]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise DmadError(box[1])
    return box[0]  # type: ignore[return-value]


def all_mean_(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over ranks in place (identity in a single process)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order (no gradient)."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm with the statistics of the global batch in a multi-process run, so N processes
    train as one with N× the batch: torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm2d`
    elsewhere (torch's has no CPU kernel). Parameter and buffer names are unchanged, so saved
    files load into the plain model."""
    if not active() or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               for m in module.modules()):
        return module
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return to_global_batchnorm(module)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any backend.

    torch's SyncBatchNorm runs on GPUs only; this is the same computation written with
    autograd-aware collectives (``torch.distributed.nn.functional.all_reduce``), so a CPU run
    under torchrun (gloo) normalises exactly as one process with the global batch would, and
    the gradient reaching each rank's activations includes the other ranks' terms through the
    shared mean and variance. Eval mode uses the running statistics, with no collective."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as ar

        dims = [0, 2, 3]
        n_local = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        xf = x.float()
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), n_local])
        stats = ar(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(m * unbiased)  # type: ignore[union-attr]
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d in ``module`` for :class:`GlobalBatchNorm2d` (same parameters and
    buffers, so state dicts are unchanged)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            g.load_state_dict(child.state_dict())
            g.to(next(child.buffers(), torch.zeros(())).device)
            g.train(child.training)
            setattr(module, name, g)
        else:
            to_global_batchnorm(child)
    return module



def _no_buffer_sync() -> dict[str, bool]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    params = inspect.signature(DDP.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else \
        {"broadcast_buffers": False}


_NO_BUFFER_SYNC = _no_buffer_sync()


class Wrappers:
    """One ``DistributedDataParallel`` per trained network, rebuilt when its set of trainable
    parameters changes (a frozen mask). Single process: the module itself."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple[bool, ...], nn.Module]] = {}

    def __call__(self, module: nn.Module) -> nn.Module:
        if not active():
            return module
        sig = tuple(p.requires_grad for p in module.parameters())
        hit = self._cache.get(id(module))
        if hit is not None and hit[0] == sig:
            return hit[1]
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(module.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        # buffers are not broadcast: every rank updates them identically (bounds, frozen flags)
        # or they are reduced where they are read (the masks' Taylor scores)
        wrapped = DDP(module, device_ids=ids, **_NO_BUFFER_SYNC)
        self._cache[id(module)] = (sig, wrapped)
        return wrapped
