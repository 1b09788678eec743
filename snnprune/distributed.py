"""torch.distributed helpers for runs launched with ``torchrun``.

    # train.py, launched as: torchrun --nproc_per_node 2 train.py
    from snnprune import distributed, data, lottery, models
    distributed.init_from_env()                       # gloo on CPU, nccl on GPU
    train, test = data.loaders("digits", distributed=distributed.is_distributed())
    lottery.run(models.build("mlp"), train, test, cfg, ddp=distributed.is_distributed(),
                device=distributed.local_device(), checkpoint_dir="runs/x")
    distributed.shutdown()                            # every rank, at the end

Inside a round, training runs under DistributedDataParallel; :func:`snnprune.collect_stats`
all-reduces its statistics, so every rank scores and masks identically; only rank 0 writes
checkpoints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE`` > 1).

    Returns True when running distributed. Backend: ``nccl`` when CUDA is available, else ``gloo``.
    A no-op outside torchrun or when a group already exists.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process): the rank that writes files and prints."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shutdown(wait: bool = True) -> None:
    """Close the default process group, after a barrier unless ``wait`` is False.

    The barrier lets every rank finish first (rank 0 may still be writing checkpoints): a rank
    that tears its group down while another is still working aborts under gloo ("terminate called
    without an active exception"). A no-op without a process group.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
