"""Test-only hook: each rank records its iteration count and a weight checksum.

With ``KILL_AT_ITER=N`` in the environment (and optionally ``KILL_RANK=R``) the
process SIGKILLs itself when iteration N + 1 is about to start, as a crash or
an out-of-memory kill would; with ``KILL_MODE=hang`` it stops responding instead.
"""
import json
import os
import signal
import time

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankMarkerHook(Hook):
    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        kill_at = os.environ.get("KILL_AT_ITER")
        rank = os.environ.get("KILL_RANK")
        if kill_at and runner.iter == int(kill_at) and (rank is None or int(rank) == get_rank()):
            if os.environ.get("KILL_MODE") == "hang":
                time.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL)

    def after_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        record = dict(rank=get_rank(), world_size=get_world_size(), iters=runner.iter,
                      checksum=checksum, wrapper=type(runner.model).__name__,
                      threads=torch.get_num_threads())
        with open(os.path.join(runner.work_dir, f"rank{get_rank()}.json"), "w") as f:
            json.dump(record, f)
