"""Training on several processes (DistributedDataParallel), on one machine or several, and in mixed precision.

Launch. `torchrun` starts the processes and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); the train
stage, run plainly with `train.processes > 1`, starts itself again under
`python -m torch.distributed.run --standalone --nproc-per-node <processes>`
(`torchrun_command`). Across machines, torchrun runs on each with `--nnodes` and
a rendezvous endpoint (docs/distributed.md).
`process_group` joins the group: gloo on CPUs, NCCL on CUDA (one GPU per process,
cuda:<LOCAL_RANK>).

What each process computes. Every process draws the same batches from the same
seeded generator and augments the same faces with the same draws (augmenting all
of a batch's faces costs little beside the network), so nothing random depends on
the number of processes. The distinct faces of a batch are then shared out in
contiguous chunks: each process passes its own chunk through the network
(`ShardedForward`) and receives the others' embeddings, so that every process
holds the whole batch's embeddings and computes the whole batch's loss, with every
pair of a P x K batch and the same mined triplets as one process would. BatchNorm
normalises by the statistics of the whole batch, summed across processes
(`SyncedBatchNorm2d`; torch's SyncBatchNorm runs on GPUs only). The gradients then
add up to one process's: each process back-propagates through its own chunk (and
its share of the batch statistics) only, scaled by the number of processes, and
DDP averages them. So N processes train the model one process trains, up to the
order of float sums (the tests hold both to a stated tolerance), with each process
running 1/N of the network's work.

Only the first process (rank 0) logs, writes outputs and talks to MLflow; all of
them validate (each holds the same weights) and stop together on rank 0's word.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from facesim.core.params import ParamsError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: one process (`SINGLE`) unless torchrun started it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank on this machine: which GPU it takes

    @property
    def is_main(self) -> bool:
        """The process that logs, writes the outputs and talks to MLflow."""
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every process (whether to stop training): they never part ways."""
        if self.size == 1:
            return flag
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None  # NCCL: GPU
        decision = torch.tensor([int(flag)], device=on)
        dist.broadcast(decision, src=0)
        return bool(decision.item())


SINGLE = World()


def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets these, and RANK, MASTER_ADDR, MASTER_PORT, in each)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(processes: int, argv: Sequence[str]) -> list[str]:
    """This machine's Python running `argv` (a script and its arguments) in `processes` processes under
    torchrun, standalone (a rendezvous on a free local port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *argv]


def relaunch_if_needed(processes: int, argv: Sequence[str] | None = None) -> None:
    """With `processes > 1`, outside torchrun: replace this process by `processes` copies of it under torchrun
    (same script, same arguments; torchrun passes signals on and exits as its workers do). Else return."""
    if processes > 1 and not under_torchrun():
        command = torchrun_command(processes, list(sys.argv if argv is None else argv))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, world: World) -> torch.device:
    """A process's own device: its GPU (cuda:<local rank>) when training on CUDA."""
    if device.type == "cuda" and world.size > 1:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def process_group(processes: int, device: torch.device, timeout_s: float = 1800) -> Iterator[World]:
    """This process's `World` while the block runs: `SINGLE` outside torchrun (with `processes` 1), else the
    process group torchrun describes (gloo on CPUs, NCCL on CUDA), left when the block ends.

    `processes` (train.processes) must be torchrun's world size: the number recorded with the
    model is the number that trained it."""
    if not under_torchrun():
        if processes != 1:
            raise ParamsError(f"train.processes is {processes}: start the stage plainly (it starts torchrun "
                              "itself) or under torchrun with as many processes in all")
        yield SINGLE
        return
    world = World(rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ["LOCAL_RANK"]))
    if world.size != processes:
        raise ParamsError(f"train.processes is {processes} but torchrun started {world.size} processes in all "
                          f"(--nnodes x --nproc-per-node); make them agree")
    if world.size == 1:
        yield world
        return
    started = not dist.is_initialized()
    if started:
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)  # before NCCL starts: each process on its own GPU
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield world
    finally:
        if started:
            dist.destroy_process_group()


# ---- the network's forward pass, shared out ---------------------------------------------------------------


def shard_bounds(n: int, world: World) -> list[tuple[int, int]]:
    """(start, stop) of each process's contiguous chunk of `n` faces: sizes differ by one at most, the
    first chunks the larger."""
    base, extra = divmod(n, world.size)
    bounds, start = [], 0
    for rank in range(world.size):
        stop = start + base + (rank < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


class _SumAcrossProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every process's loss depends on the sum."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises by the mean and variance of the whole batch across the
    processes (sums of x and x^2 and the counts, added up by an all-reduce that back-propagates),
    and keeps the running statistics one process would. In eval mode it is BatchNorm2d. The sums are taken
    in float64, so that E[x^2] - E[x]^2 loses nothing to cancellation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        wide = x.double()
        count = torch.full((1,), x.numel() / channels, dtype=torch.float64, device=x.device)
        totals = _SumAcrossProcesses.apply(torch.cat([wide.sum(dim=(0, 2, 3)), (wide * wide).sum(dim=(0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        variance = totals[channels:2 * channels] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = variance * (n / (n - 1))
                self.running_mean.mul_(1 - momentum).add_(mean.to(x.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(x.dtype), alpha=momentum)
        scale = torch.rsqrt(variance + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight.double(), shift * self.weight.double() + self.bias.double()
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)


def with_synced_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of `module`'s tree whose BatchNorm2d layers are `SyncedBatchNorm2d`: the copies share every
    parameter and buffer with `module` (an optimiser of `module` trains both; `module` itself is unchanged
    and validates, folded, as one process's model would)."""
    clone = copy.copy(module)
    if type(module) is nn.BatchNorm2d:
        clone.__class__ = SyncedBatchNorm2d
        return clone
    clone._modules = {name: None if child is None else with_synced_batchnorm(child)
                      for name, child in module._modules.items()}
    return clone


class MixedPrecision(nn.Module):
    """`network`'s forward pass under autocast to `dtype` (bf16 or fp16), its embeddings returned in float32,
    so that the loss and its mining run in float32."""

    def __init__(self, network: nn.Module, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.network, self.device_type, self.dtype = network, device.type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.network(x).float()


class ShardedForward(nn.Module):
    """The batch's embeddings from every process's share (see the module doc): each process embeds its
    contiguous chunk of the batch's faces through `ddp` and gathers the other chunks, detached; its own
    chunk's gradient is scaled by the number of processes, which DDP's averaging undoes."""

    def __init__(self, ddp: nn.Module, world: World):
        super().__init__()
        self.ddp, self.world = ddp, world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bounds = shard_bounds(len(x), self.world)
        if any(start == stop for start, stop in bounds):
            raise ValueError(f"a batch of {len(x)} distinct faces cannot be shared by {self.world.size} "
                             "processes; lower train.processes or raise train.batch_size")
        start, stop = bounds[self.world.rank]
        own = self.ddp(x[start:stop])
        longest = max(b - a for a, b in bounds)  # all_gather moves tensors of one size: pad, then cut
        padded = torch.zeros(longest, *own.shape[1:], dtype=own.dtype, device=own.device)
        padded[: len(own)] = own.detach()
        gathered = [torch.empty_like(padded) for _ in range(self.world.size)]
        dist.all_gather(gathered, padded)
        if own.requires_grad:
            own.register_hook(lambda grad: grad * self.world.size)
        chunks = [own if rank == self.world.rank else gathered[rank][: b - a] for rank, (a, b) in enumerate(bounds)]
        return torch.cat(chunks)


def training_forward(network: nn.Module, precision: str, device: torch.device, world: World) -> nn.Module:
    """What the training loop calls to embed a batch's faces: `network` itself with one process in float32
    (the loop then computes exactly what it did before there were others); under autocast with `precision`
    bf16 or fp16; across `world`'s processes through DDP."""
    dtype = PRECISIONS[precision]
    forward = network
    if world.size > 1:
        forward = with_synced_batchnorm(forward)
    if dtype is not None:
        forward = MixedPrecision(forward, device, dtype)
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        forward = ShardedForward(nn.parallel.DistributedDataParallel(forward, device_ids=ids), world)
    return forward
