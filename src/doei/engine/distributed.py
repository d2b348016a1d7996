"""Multi-process (torchrun) support: process-group setup, rank helpers, sharding, metric reduction.

Every command runs unchanged as a single process. Under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) :func:`init_from_env` joins the
process group — NCCL when the run uses CUDA, gloo on CPU — and the helpers below give the
semantics the rest of the package relies on (docs/distributed.md):

* :func:`global_batch_indices` — each rank's sample indices of an epoch such that the union of the
  ranks' step-``i`` batches is exactly the single-process step-``i`` batch (``batch_size`` is the
  GLOBAL batch; each rank gets ``batch_size // world``);
* :func:`active_world` / :func:`training_ranks` — the world-size rule: a global batch ``B`` that the
  ``W`` processes cannot split evenly trains on the largest ``W' <= W`` dividing ``B`` (ranks
  ``0..W'-1``) while the other ranks follow step by step without computing;
* :func:`global_ratio` — a ratio loss (sum over the batch / a count over the batch) normalised by the
  count of the GLOBAL batch, so its DDP gradient is the single-process one;
* :func:`shard` — a deterministic split of a work list (CAM ids, images to segment) across ranks;
* :func:`all_reduce_mean` / :func:`all_reduce_sum` — metrics averaged/summed over ranks;
* :func:`is_main` / :func:`main_only` — only rank 0 writes checkpoints, logs and summaries.

With one process (no env, or ``WORLD_SIZE=1``) all of these are identities and nothing is
initialised, so single-process results are bit-for-bit what they were before.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from doei.errors import DoeiError

T = TypeVar("T")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT_ENV = "DOEI_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120.0   # collective timeout (minutes): rank-0-only validation/checkpoints on COCO


# ------------------------------------------------------------------------------------ environment
def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment; ``(0, 1, 0)`` without it.

    Raises a one-line DoeiError for a malformed environment (non-integers, rank outside the world).
    """
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    try:
        rank, world, local = (int(os.environ.get(k, "0")) for k in _ENV_KEYS)
    except ValueError:
        got = {k: os.environ.get(k) for k in _ENV_KEYS}
        raise DoeiError(f"torchrun environment {got}: RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DoeiError(f"torchrun environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: "
                        "expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world, local


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 without torchrun)."""
    return env_world()[2]


def is_main() -> bool:
    """True on rank 0 — the only process that writes checkpoints, logs and summaries."""
    return rank() == 0


def process_group_timeout() -> datetime.timedelta:
    """How long a collective (barrier, all-reduce) waits for the slowest rank before the job aborts.

    ``DOEI_DIST_TIMEOUT_MIN`` (minutes, a positive number) or :data:`DEFAULT_TIMEOUT_MIN`. Rank 0
    alone validates, writes checkpoints and reports while the others wait at a barrier; PyTorch's
    defaults (10 min for NCCL, 30 for gloo) can abort a COCO run there. A one-line DoeiError for a
    value that is not a positive finite number.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return datetime.timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = float("nan")
    if not math.isfinite(minutes) or minutes <= 0:
        raise DoeiError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of minutes (default {DEFAULT_TIMEOUT_MIN:g})")
    return datetime.timedelta(minutes=minutes)


def init_from_env(device_type: str = "cpu") -> tuple[int, int]:
    """Join the process group described by the torchrun environment (idempotent); ``(rank, world)``.

    ``device_type``: ``"cuda"`` → NCCL (and ``torch.cuda.set_device(LOCAL_RANK)``), else gloo.
    Collectives time out after :func:`process_group_timeout` (``DOEI_DIST_TIMEOUT_MIN``).
    Without the environment, or with ``WORLD_SIZE=1``, nothing is initialised and ``(0, 1)`` is
    returned. The group is destroyed at interpreter exit.
    """
    r, w, local = env_world()
    if w == 1:
        return 0, 1
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            raise DoeiError(f"torchrun environment: WORLD_SIZE={w} but {k} is not set (launch with torchrun)")
    timeout = process_group_timeout()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DoeiError(f"WORLD_SIZE={w} with CUDA requested but CUDA is not available (use device cpu)")
        if local >= torch.cuda.device_count():
            raise DoeiError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=r, world_size=w, timeout=timeout)
    atexit.register(destroy)
    return r, w


def destroy() -> None:
    """Leave the process group (no-op when none)."""
    if is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """With several processes, ``cuda`` (no index) means this process's GPU ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


# ------------------------------------------------------------------------------------ collectives
def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


def _reduce(values: Sequence[float] | torch.Tensor, average: bool, device: torch.device | None,
            group: Any = None) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if world_size() == 1:
        return t
    dev = device if device is not None else torch.device("cpu")
    if dist.get_backend() == "nccl" and dev.type != "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    buf = t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    out = buf.cpu()
    return out / world_size() if average else out


def all_reduce_sum(values: Sequence[float] | torch.Tensor, device: torch.device | None = None,
                   group: Any = None) -> torch.Tensor:
    """Element-wise sum over ranks (of ``group``; default all) of a float64 vector ``[N]`` (a copy with one process)."""
    return _reduce(values, False, device, group)


def all_reduce_mean(values: Sequence[float] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Element-wise mean over ranks of a float64 vector ``[N]`` (equal weights: every rank sees the
    same number of samples per step, so the mean of per-rank means is the global-batch mean)."""
    return _reduce(values, True, device)


# ------------------------------------------------------------------------------------ sharding
def shard(items: Sequence[T], rank: int, world: int, strided: bool = True) -> list[T]:
    """This rank's part of ``items``: ``items[rank::world]`` (strided, the default: balances work when
    items are sorted by size) or a contiguous block (the first ``len % world`` ranks get one extra).

    Deterministic, disjoint and covering: the union over ranks is ``items`` exactly once.
    """
    if world < 1 or not 0 <= rank < world:
        raise DoeiError(f"shard: rank {rank} outside a world of {world}")
    items = list(items)
    if strided:
        return items[rank::world]
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


def global_batch_indices(order: Sequence[int], batch_size: int, rank: int, world: int,
                         drop_last: bool = True) -> list[int]:
    """Indices this rank draws in an epoch so that the ranks together reproduce the single-process batches.

    ``order``: the epoch's sample order ``[N]`` (the single-process sampler's). The single process
    forms batches ``order[i*B:(i+1)*B]``; rank ``r`` takes the ``r``-th of ``world`` equal slices of
    each, ``order[i*B + r*b : i*B + (r+1)*b]`` with ``b = B // world``. Requires ``B % world == 0``;
    with ``drop_last`` the incomplete tail batch is dropped (as the training loop does), without it
    the whole ``order`` must be one batch (``N <= B``) and must split evenly too.
    """
    order = list(order)
    if batch_size % world:
        raise DoeiError(f"train.batch_size = {batch_size} is the global batch and must be divisible by the "
                        f"number of processes ({world})")
    b = batch_size // world
    if not drop_last:
        if len(order) > batch_size or len(order) % world:
            raise DoeiError(f"{len(order)} training images cannot form one global batch split evenly over "
                            f"{world} processes (use more images or a batch size dividing them)")
        b = len(order) // world
        return order[rank * b:(rank + 1) * b]
    steps = len(order) // batch_size
    t = torch.as_tensor(order[:steps * batch_size], dtype=torch.int64).view(steps, world, b)
    return t[:, rank].reshape(-1).tolist()


# ------------------------------------------------------------------------------------ the world-size rule
def active_world(batch_size: int, world: int) -> int:
    """How many processes train a global batch of ``batch_size``: the largest ``W' <= world`` dividing it.

    Every rank ``r < W'`` takes ``batch_size / W'`` images of every single-process batch, which keeps the
    step the single-process step; ranks ``W'..world-1`` wait (docs/distributed.md, "Effective batch").
    """
    for name, v in (("batch_size", batch_size), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"active_world: {name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"active_world: {name} = {v}, expected >= 1")
    return max(d for d in range(1, min(batch_size, world) + 1) if batch_size % d == 0)


class TrainingRanks:
    """The ranks ``0..size-1`` that train (the rest of the world waits): ``group`` is their process group
    (``None`` = the default group, when they are the whole world; unused when ``size == 1``)."""

    def __init__(self, size: int, group: Any = None) -> None:
        self.size, self.group = size, group

    def active(self, r: int | None = None) -> bool:
        return (rank() if r is None else r) < self.size


_CURRENT: list[TrainingRanks] = []


def current_training_ranks() -> TrainingRanks:
    """The training ranks of the innermost :func:`training_ranks` block (all of a one-process world outside)."""
    return _CURRENT[-1] if _CURRENT else TrainingRanks(world_size())


@contextlib.contextmanager
def training_ranks(size: int) -> Iterator[TrainingRanks]:
    """Collective (every rank enters): ranks ``0..size-1`` train inside the block. With ``size`` below
    the world a process group of those ranks is created (every rank must call ``new_group``) and used by
    DDP, :func:`global_ratio` and the synchronised BatchNorm (:mod:`doei.engine.sync_bn`)."""
    w = world_size()
    if not 1 <= size <= w:
        raise ValueError(f"training_ranks: size = {size}, expected 1..{w}")
    group = None
    if 1 < size < w:
        group = dist.new_group(ranks=list(range(size)), timeout=process_group_timeout())
    _CURRENT.append(TrainingRanks(size, group))
    try:
        yield _CURRENT[-1]
    finally:
        _CURRENT.pop()
        if group is not None and rank() < size:
            dist.destroy_process_group(group)


def global_ratio(num: torch.Tensor, count: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``num / (count + eps)`` over the GLOBAL batch, for a loss that is a sum over the batch divided by a
    count over the batch (pixels not ignored, affinity pairs): this rank's ``num`` over the count summed
    over the training ranks, times their number. DDP averages gradients over the ranks, so the step is
    ``sum_r d num_r / (sum_r count_r + eps)`` — the single-process gradient. The value on one rank is its
    share; the mean over ranks (what the loop logs) is the global value. With one training rank it is
    exactly ``num / (count + eps)``. ``count`` is not differentiated.
    """
    if not isinstance(num, torch.Tensor) or not isinstance(count, torch.Tensor):
        raise TypeError("global_ratio: num and count must be tensors")
    tr = current_training_ranks()
    if tr.size == 1:
        return num / (count + eps)
    return num * tr.size / (global_sum(count).to(num.dtype) + eps)


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` (detached) summed over the training ranks (:func:`training_ranks`); ``t`` itself with one."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"global_sum: expected a tensor, got {type(t).__name__}")
    tr = current_training_ranks()
    if tr.size == 1:
        return t.detach()
    total = t.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=tr.group)
    return total


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Wrap ``fn`` so that it runs on rank 0 only (returns None elsewhere): loggers, writers."""

    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    wrapped.__doc__ = fn.__doc__
    wrapped.__name__ = getattr(fn, "__name__", "main_only")
    return wrapped


__all__ = ["active_world", "TrainingRanks", "training_ranks", "current_training_ranks", "global_ratio", "global_sum", "env_world", "process_group_timeout", "init_from_env", "destroy", "is_initialized", "rank", "world_size", "local_rank", "is_main",
           "device_for", "barrier", "all_reduce_sum", "all_reduce_mean", "shard", "global_batch_indices", "main_only"]
