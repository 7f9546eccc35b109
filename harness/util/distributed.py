"""Rank helpers for runs under ``accelerate launch`` / ``torchrun`` (one process per device).

Nothing here starts processes or schedules work: the launcher sets ``WORLD_SIZE``, ``RANK`` (the
global process index across every node) and ``LOCAL_RANK`` (the index on this node), and these
helpers read them. Without a launcher (``WORLD_SIZE`` unset or 1) every helper is the identity of a
single process: ``rank() == 0``, ``is_main()``, ``barrier()`` does nothing, ``broadcast(x)`` returns x,
``split(items)`` returns every item, and no process group is created.

Work is always split by the global ``RANK``, never by ``LOCAL_RANK``: on two nodes the per-node
index repeats (lm-eval#1081 split the documents by it and lost half of them). Object collectives and
barriers go through a gloo group (CPU, long timeout), whatever backend the Trainer uses for tensors,
so a rank that waits for the main process to finish a long evaluation step does not time out NCCL.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

T = TypeVar("T")

#: seconds a rank waits at a barrier or broadcast for the others (HARNESS_DIST_TIMEOUT overrides)
DEFAULT_TIMEOUT_S = 6 * 3600

_group: Any = None


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return world_size() > 1


def rank() -> int:
    """The global process index (0 .. world_size-1), across every node."""
    return int(os.environ.get("RANK", "0")) if is_distributed() else 0


def local_rank() -> int:
    """The process index on this node (which GPU this process drives); never used to split work."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def device(requested: str | None) -> str | None:
    """The torch device of this rank: ``cuda:LOCAL_RANK`` under a launcher on a GPU machine (when no
    device or plain ``cuda`` was asked for), the request otherwise (None: the single-process default)."""
    if not is_distributed() or requested not in (None, "cuda"):
        return requested
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        return f"cuda:{local_rank()}"
    return requested or "cpu"


def _timeout() -> timedelta:
    try:
        return timedelta(seconds=float(os.environ.get("HARNESS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)


def init() -> Any:
    """The process group (created once, from the launcher's env): NCCL on GPUs, gloo on CPUs; and the
    gloo group the helpers here use. None when not distributed."""
    global _group
    if not is_distributed():
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=_timeout())
    if _group is None:
        _group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=_timeout())
    return _group


def shutdown() -> None:
    """Destroy the process group before the interpreter exits (nothing when none was created). Left to
    interpreter shutdown, gloo's threads are sometimes torn down out of order and the process aborts
    after its work is done ("terminate called without an active exception", SIGABRT: about 1 run in 9
    of a fully cached two-rank eval here), which the launcher reports as a failed rank. Every command
    ends in a collective (``agree``, or the ranks waiting for the main process), so this is local."""
    global _group
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _group = None


def barrier() -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier(group=init())


def broadcast(obj: T) -> T:
    """The main process's ``obj`` on every rank (picklable; the others' argument is ignored)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=init())
    return cast(T, box[0])  # rank 0's obj, which broadcast_object_list filled in on every rank


def gather(obj: T) -> list[T] | None:
    """Every rank's ``obj`` on the main process, in rank order (None on the other ranks)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=init())
    return out


def all_reduce_any(flag: bool) -> bool:
    """True on every rank when it is True on any rank."""
    if not is_distributed():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=init())
    return bool(t.item())


def split(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of ``items`` by global rank, as accelerate's
    ``PartialState().split_between_processes`` cuts a list: the first ``len % world`` ranks take one
    more. No padding: a rank may get nothing. The shares, in rank order, are ``items`` exactly."""
    n, w, r = len(items), world_size(), rank()
    per, extra = divmod(n, w)
    start = r * per + min(r, extra)
    return list(items[start : start + per + (1 if r < extra else 0)])


def agree(code: int | None) -> int:
    """The main process's exit code on every rank, once every rank got here (a barrier): the other ranks
    exit with the code the main one decided (their own argument is ignored)."""
    if not is_distributed():
        return int(code or 0)
    return int(broadcast(code) or 0)


def stop_sync_callback(stopper: Any) -> Any:
    """A TrainerCallback (put before ``stopper.callback()``) that makes a stop request on any rank a
    request on every rank at the same step end, so all ranks save and stop together (a signal reaches
    the ranks at different moments; a rank that stopped alone would leave the others in a collective)."""
    from transformers import TrainerCallback

    class _StopSync(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if all_reduce_any(bool(stopper.requested)):
                stopper.requested = True
            return control

    return _StopSync()
