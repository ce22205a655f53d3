"""Data-parallel runs on ``torch.distributed`` (torchrun), one process per GPU or CPU worker.

``torchrun --nproc-per-node N -m audiobench run ...`` starts N copies of the same command; torchrun
sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address) in each. The engine
then works like this:

* **one writer**: rank 0 alone creates the run folder, holds its lock and writes ``run.json``,
  units and tables; the other ranks never touch the result folder (so several nodes need no
  shared file system for results; each node needs the data).
* **sharding**: the clip ranges still missing for a (model, condition) are cut into the same
  batches the single-process run would use (:func:`split_batches`); batch ``i`` goes to rank
  ``i mod world_size`` (:func:`shard_batches`). Each round, every rank computes at most one batch
  and rank 0 gathers the units and writes them, so nothing is computed twice or left out, unit
  files are the same as a single-process run's, and a run interrupted at any point resumes from
  the stored units (with any number of ranks). Per-clip randomness is keyed by (seed, clip id,
  condition), so the numbers equal the single-process run's.
* **universal perturbations**: every batch of the single-process fit is split across ranks
  (:func:`split_batch`); each rank takes the gradient on its part and the parts are summed with
  an all-reduce in ``Universal.fit``'s ``grad_hook``, so every step is the single-process step
  up to the order of float summation (the learnt delta can differ in the last bits, and with
  ``linf`` a sign flip of a near-zero gradient component moves that sample by one step).
  Rank 0's delta is broadcast and stored.
* **failures**: in the batch loop every rank reports its status with each round; an error on any
  rank stops all ranks after the round and rank 0 reports it as one line naming the rank. An
  error inside a phase with internal collectives (model loading, universal fitting) is reported
  by the failing rank itself, which exits; the others' collectives then fail and they exit
  without a second message. Collectives time out after ``AUDIOBENCH_DIST_TIMEOUT`` seconds
  (default 1800), so nothing waits forever. The result folder is never marked complete.

Backend: NCCL when the run's device is CUDA (device ``cuda:LOCAL_RANK``), gloo otherwise.

Test hook: ``AUDIOBENCH_FAIL_RANK=R`` makes rank R fail in the batch loop after it computed
``AUDIOBENCH_FAIL_AFTER`` batches (default 0); it exists to test the failure path.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch

from audiobench.errors import AudiobenchError, ConfigError

log = logging.getLogger(__name__)

FAIL_RANK_ENV = "AUDIOBENCH_FAIL_RANK"
FAIL_AFTER_ENV = "AUDIOBENCH_FAIL_AFTER"
TIMEOUT_ENV = "AUDIOBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(AudiobenchError):
    """A rank failed (or lost contact with the others); the message names the rank.

    ``report_here`` is False on ranks whose message another rank (rank 0) already reports, so
    the command exits non-zero without printing the same failure N times.
    """

    def __init__(self, message: str, *, report_here: bool = True):
        super().__init__(message)
        self.report_here = report_here


class InjectedFailure(AudiobenchError):
    """Raised by the ``AUDIOBENCH_FAIL_RANK`` test hook."""


def env_world() -> Tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment variables (1, 0, 0 if unset)."""

    def _int(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None

    world, rank, local = _int("WORLD_SIZE", 1), _int("RANK", 0), _int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"WORLD_SIZE={world} RANK={rank}: rank must be in 0..WORLD_SIZE-1")
    return world, rank, local


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be > 0 seconds")
    return datetime.timedelta(seconds=seconds)


@dataclass
class DistContext:
    """This process's place in the job. With ``world_size == 1`` every method is a local no-op."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (each wraps communication errors into a one-line DistributedError) ----------
    def _lost(self, exc: BaseException) -> DistributedError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # a peer that failed has reported its own error; this one only explains why it stops
        return DistributedError(f"rank {self.rank}: lost contact with the other ranks ({first})", report_here=False)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        try:
            dist.broadcast_object_list(box, src=src)
        except (RuntimeError, ValueError) as exc:
            raise self._lost(exc) from None
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` in rank order on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        try:
            dist.gather_object(obj, out, dst=0)
        except (RuntimeError, ValueError) as exc:
            raise self._lost(exc) from None
        return out

    def all_gather(self, obj: Any) -> List[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj)
        except (RuntimeError, ValueError) as exc:
            raise self._lost(exc) from None
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (a new tensor; the input is not modified)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone().contiguous()
        try:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        except (RuntimeError, ValueError) as exc:
            raise self._lost(exc) from None
        return out

    # -- error agreement --------------------------------------------------------------------------
    def agree(self, error: Optional[BaseException], what: str) -> None:
        """All ranks learn whether any rank failed ``what``; if one did, every rank raises.

        With one process the original exception is re-raised unchanged.
        """
        if not self.active:
            if error is not None:
                raise error
            return
        mine = None if error is None else describe(error)
        if error is not None and not isinstance(error, AudiobenchError):
            log.error("rank %d: unexpected error during %s", self.rank, what, exc_info=error)
        statuses = self.all_gather(mine)
        failed = [(r, m) for r, m in enumerate(statuses) if m is not None]
        if failed:
            r, m = failed[0]
            raise DistributedError(f"rank {r} failed during {what}: {m}", report_here=self.is_main) from error

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run a block on every rank; afterwards all ranks agree on success (see :meth:`agree`).

        The block must not itself use collectives (a failing rank would leave the others inside one).
        """
        error = None
        try:
            yield
        except Exception as exc:  # every rank must reach the agreement below
            error = exc
        self.agree(error, what)

    @contextlib.contextmanager
    def solo_errors(self, what: str) -> Iterator[None]:
        """A block with internal collectives: a rank that fails reports its own error and leaves."""
        try:
            yield
        except DistributedError:
            raise
        except Exception as exc:
            if not self.active:
                raise
            if not isinstance(exc, AudiobenchError):
                log.error("rank %d: unexpected error during %s", self.rank, what, exc_info=exc)
            raise DistributedError(f"rank {self.rank} failed during {what}: {describe(exc)}") from exc

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                with contextlib.suppress(Exception):
                    dist.destroy_process_group()


def describe(exc: BaseException) -> str:
    """One line for an exception: the message (user errors) or ``Type: message`` (bugs)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, AudiobenchError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def setup(device: torch.device) -> Tuple[DistContext, torch.device]:
    """Join the torchrun job described by the environment (if any) and pick this rank's device.

    On CUDA a device without an index becomes ``cuda:LOCAL_RANK`` and the backend is NCCL;
    otherwise gloo. Without ``WORLD_SIZE > 1`` nothing is initialised.
    """
    world, rank, local = env_world()
    if world == 1:
        return DistContext(), device
    import torch.distributed as dist

    if device.type == "cuda":
        if device.index is None:
            if local >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA device(s); "
                    "start at most that many processes per node"
                )
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"backend": backend, "timeout": _timeout()}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    else:
        backend = dist.get_backend()
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ConfigError(
                f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                f"disagrees with RANK={rank} WORLD_SIZE={world}"
            )
    return DistContext(world, rank, local, backend), device


# --- sharding -----------------------------------------------------------------------------------
def split_batches(ranges: Sequence[Tuple[int, int]], batch_size: int) -> List[Tuple[int, int]]:
    """The batches a single-process run makes of ``ranges``: each range cut every ``batch_size``."""
    out = []
    for a, b in ranges:
        out.extend((s, min(s + int(batch_size), b)) for s in range(int(a), int(b), int(batch_size)))
    return out


def shard_batches(batches: Sequence[Tuple[int, int]], rank: int, world_size: int) -> List[Tuple[int, int]]:
    """This rank's batches: every ``world_size``-th, starting at ``rank`` (round-robin)."""
    return list(batches[rank::world_size])


def split_batch(a: int, b: int, rank: int, world_size: int) -> Tuple[int, int]:
    """This rank's contiguous part of clips ``[a, b)`` (possibly empty: ``b - a < world_size``)."""
    n = b - a
    return a + n * rank // world_size, a + n * (rank + 1) // world_size


def fail_hook(ctx: DistContext, done: int) -> None:
    """The ``AUDIOBENCH_FAIL_RANK`` test hook (see the module docstring)."""
    target = os.environ.get(FAIL_RANK_ENV)
    if target is None or target == "":
        return
    try:
        target_rank = int(target)
        after = int(os.environ.get(FAIL_AFTER_ENV) or 0)
    except ValueError:
        raise ConfigError(f"{FAIL_RANK_ENV}={target!r} / {FAIL_AFTER_ENV}: not integers") from None
    if ctx.rank == target_rank and done >= after:
        raise InjectedFailure(f"injected failure after {done} batch(es) ({FAIL_RANK_ENV}={target_rank} test hook)")
