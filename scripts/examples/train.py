"""A small seeded PyTorch training job for hybridctl: single-node or multi-node (DDP over gloo),
checkpointing to $HYBRIDCTL_CHECKPOINT_DIR and resuming from it after a preemption.

Run it directly (`python train.py --steps 100`), under hybridctl (`hybridctl submit train.yaml`),
or across nodes (`num_nodes: 2`): it reads the rendezvous variables hybridctl sets (MASTER_ADDR,
MASTER_PORT, NODE_RANK, NNODES), one process per node. The data is synthetic and seeded, and each
step averages gradients over one global batch split evenly across ranks, so the final weights are
the same however many nodes ran it and however often it was interrupted."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

GLOBAL_BATCH = 64


def make_data(seed: int, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    w = torch.randn(16, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--ckpt-every", type=int, default=10, help="steps between checkpoints")
    p.add_argument("--step-time", type=float, default=0.0, help="sleep per step (to make a demo job last)")
    p.add_argument("--out", help="where rank 0 writes the final weights")
    args = p.parse_args()

    torch.set_num_threads(1)
    world = int(os.environ.get("NNODES", "1"))
    rank = int(os.environ.get("NODE_RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", init_method="env://", world_size=world, rank=rank)
    ckpt_dir = Path(os.environ.get("HYBRIDCTL_CHECKPOINT_DIR") or ".")
    ckpt = ckpt_dir / "ckpt.pt"
    model = make_model(args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        print(f"rank {rank}: resumed from step {step}", flush=True)
    x, y = make_data(args.seed)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    def save() -> None:
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, ckpt)

    share = GLOBAL_BATCH // world
    while step < args.steps:
        g = torch.Generator().manual_seed(args.seed * 100003 + step)
        idx = torch.randint(0, len(x), (GLOBAL_BATCH,), generator=g)[rank * share:(rank + 1) * share]
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        if world > 1:
            for prm in model.parameters():
                dist.all_reduce(prm.grad, op=dist.ReduceOp.SUM)
                prm.grad /= world
        opt.step()
        step += 1
        if step % args.ckpt_every == 0 or step == args.steps:
            save()
            print(f"rank {rank}: step {step} loss {loss.item():.5f} (checkpoint)", flush=True)
        if args.step_time:
            import time

            time.sleep(args.step_time)
        if stop["now"]:
            save()
            print(f"rank {rank}: SIGTERM at step {step}: checkpoint saved, exiting", flush=True)
            return 143
    if rank == 0 and args.out:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    print(f"rank {rank}: done at step {step}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
