"""Test-only hook: each rank records its iteration count and a weight checksum."""
import json
import os

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankMarkerHook(Hook):
    def after_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        record = dict(rank=get_rank(), world_size=get_world_size(), iters=runner.iter,
                      checksum=checksum, wrapper=type(runner.model).__name__,
                      threads=torch.get_num_threads())
        with open(os.path.join(runner.work_dir, f"rank{get_rank()}.json"), "w") as f:
            json.dump(record, f)
