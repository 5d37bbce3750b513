"""One training process, or one of torchrun's: rank, device and process group.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them this is a single process. GPUs use
nccl (one GPU per process, cuda:LOCAL_RANK), CPUs gloo."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ExportError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Process:
    world: int
    rank: int
    device: torch.device

    @property
    def main(self):
        """Rank 0 writes checkpoints, logs and progress."""
        return self.rank == 0

    def mean(self, values):
        """{name: float} averaged over the processes (every process gets the same numbers)."""
        if self.world == 1:
            return values
        names = sorted(values)
        packed = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        return {n: float(v) / self.world for n, v in zip(names, packed.tolist())}

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def same(self, what, value, hint):
        """Fail in every process unless all of them hold the same integer `value`."""
        if self.world == 1:
            return
        bounds = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        low, high = -int(bounds[1]), int(bounds[0])
        if low != high:
            raise ExportError(f"the processes disagree on {what} ({low}..{high}); {hint}")


def start(device="auto"):
    """Join torchrun's process group when launched by it; pick the device."""
    if device not in DEVICES:
        raise ExportError(f"--device {device!r}: allowed {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ExportError("--device cuda: no CUDA device is visible to PyTorch (torch.cuda.is_available() is False)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local >= torch.cuda.device_count():
            raise ExportError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: "
                              "--nproc_per_node must not exceed the GPUs of a node")
        torch.cuda.set_device(local)
    where = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Process(world=world, rank=rank, device=where)


def stop(process):
    """Leave the process group (no barrier: after a failure in one process the others may be
    waiting in a collective that will never complete; torchrun ends them)."""
    if process.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
