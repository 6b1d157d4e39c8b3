"""Checkpoints written by mmengine's Runner load with weights_only=True only."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_checkpoint as mmengine_load_checkpoint
from mmseg.registry import MODELS

import mmseg_aspp
from helpers import head_cfg


class _HeadOnly(BaseModel):
    def __init__(self):
        super().__init__()
        self.head = MODELS.build(head_cfg("ours", num_classes=3))

    def forward(self, inputs, labels=None, mode="tensor"):
        logits = self.head([inputs])
        if mode == "loss":
            return dict(loss=torch.nn.functional.cross_entropy(logits, labels))
        return logits


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        gen = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randn(16, 9, 9, generator=gen),
                    labels=torch.randint(0, 3, (9, 9), generator=gen))


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("work")
    runner = Runner(
        model=_HeadOnly(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Pairs(), sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=2, collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=4, by_epoch=False)),
        default_scope="mmseg",
        experiment_name=f"ckpt_{os.getpid()}",
    )
    runner.train()
    path = os.path.join(str(work_dir), "iter_4.pth")
    assert os.path.isfile(path)
    return path, runner.model.state_dict()


@pytest.fixture
def torch_load_calls(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_runner_checkpoint_needs_only_allowlisted_globals(runner_checkpoint):
    path, _ = runner_checkpoint
    # Importing mmseg_aspp registered the allowlist: nothing else is needed.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []


def test_our_loader_reads_runner_checkpoint(runner_checkpoint, torch_load_calls):
    path, state = runner_checkpoint
    ckpt = mmseg_aspp.load_checkpoint_file(path)
    assert torch_load_calls == [True]
    assert ckpt["meta"]["iter"] == 4
    for key, value in state.items():
        assert torch.equal(ckpt["state_dict"][key], value)
    scalars = ckpt["message_hub"]["log_scalars"]  # what makes the file more than tensors
    assert scalars and all(isinstance(v, HistoryBuffer) for v in scalars.values())
    assert any(isinstance(v.data[0], np.ndarray) for v in scalars.values())


def test_mmengine_loader_never_unpickles_unsafely(runner_checkpoint, torch_load_calls):
    path, state = runner_checkpoint
    model = _HeadOnly()
    mmengine_load_checkpoint(model, path, map_location="cpu", strict=True)
    assert torch_load_calls and False not in torch_load_calls
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_foreign_global_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.ones(1), "payload": _Pairs()}, path)
    with pytest.raises(mmseg_aspp.checkpoint.UnsafeCheckpointError, match="evil.pth"):
        mmseg_aspp.load_checkpoint_file(path)


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    class _Sneaky:
        def __reduce__(self):
            return getattr, (np.ndarray, "tofile")

    path = tmp_path / "sneaky.pth"
    torch.save({"fn": _Sneaky()}, path)
    with pytest.raises(mmseg_aspp.checkpoint.UnsafeCheckpointError, match="refused getattr"):
        mmseg_aspp.load_checkpoint_file(path)


def test_history_buffer_statistics_load_in_a_fresh_process(runner_checkpoint):
    # No HistoryBuffer has been instantiated there, so its method table is still empty.
    import subprocess
    import sys

    path, _ = runner_checkpoint
    code = f"import mmseg_aspp; print(mmseg_aspp.load_checkpoint_file({path!r})['meta']['iter'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("4")
