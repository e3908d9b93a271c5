"""One process of a 2-process gloo job: conditions travel with globally coupled pairs.

Usage: python cond_job.py OUT_DIR. Writes OUT_DIR/rank<R>.pt with the pairing of batch 1.
"""

import sys

import torch
import torch.distributed as dist

from otcfm.couplings import ExactOT
from otcfm.train.prefetch import Shard, couple_batch

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
shard = Shard(rank, world, "global", dist.new_group(backend="gloo"))
g = torch.Generator().manual_seed(0)
src, tgt = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 3
pair = couple_batch(ExactOT(), src, tgt, 64, 1, seed=5, shard=shard,
                    cond0={"id": torch.arange(300)}, cond1=tgt[:, 0].clone()).pair
torch.save({"x0": pair.x0, "x1": pair.x1, "cond0": pair.cond0, "cond1": pair.cond1},
           f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
