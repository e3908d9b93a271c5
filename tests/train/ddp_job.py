"""One process of a 2-process gloo job for the distributed tests (started by conftest.ranks).

Usage: python ddp_job.py CONFIG.toml new|resume
"""

import sys

from otcfm.train.config import RunConfig
from otcfm.train.launch import process_group
from otcfm.train.loop import train

cfg = RunConfig.from_toml(sys.argv[1])
with process_group(cfg.device, timeout=cfg.distributed.timeout):
    train(cfg, resume=sys.argv[2] == "resume", progress=False)
