"""Checkpoints written by mmengine's Runner load with weights_only=True only."""
import collections
import os
import random

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


class _RunsCommand:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def safe_loading():
    """mmengine's loaders routed through ours for one test, then restored."""
    from mmengine.runner import checkpoint as mmengine_checkpoint

    schemes = dict(mmengine_checkpoint.CheckpointLoader._schemes)
    http = mmengine_checkpoint.load_from_http
    mmseg_aspp.install_safe_loading()
    yield mmengine_checkpoint
    mmengine_checkpoint.CheckpointLoader._schemes = schemes
    mmengine_checkpoint.load_from_http = http


def test_code_in_a_checkpoint_never_runs_through_mmengine(tmp_path, safe_loading, torch_load_calls):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(mmseg_aspp.checkpoint.UnsafeCheckpointError, match=r"evil.pth.*posix.system"):
        safe_loading._load_checkpoint(str(path), map_location="cpu")
    assert torch_load_calls == [True]  # no weights_only=False retry, as onedl-mmengine would do
    assert not marker.exists()

    with pytest.warns(UserWarning, match="unsafe load"):
        mmseg_aspp.load_checkpoint_file(path, unsafe=True)
    assert marker.exists()  # the payload is real: only the allowlist kept it from running


def test_url_checkpoints_are_cached_then_loaded_safely(tmp_path, safe_loading, runner_checkpoint):
    # open-mmlab:// and torchvision:// resolve to a URL and call load_from_http directly.
    path, state = runner_checkpoint
    cache = tmp_path / "cache"
    ckpt = safe_loading.load_from_http(f"file://{path}", model_dir=str(cache))
    assert (cache / os.path.basename(path)).is_file()
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in state.items())

    evil = tmp_path / "evil.pth"
    torch.save({"meta": _RunsCommand(f"touch {tmp_path / 'ran'}")}, evil)
    with pytest.raises(mmseg_aspp.checkpoint.UnsafeCheckpointError):
        safe_loading.load_from_http(f"file://{evil}", model_dir=str(cache))
    assert not (tmp_path / "ran").exists()


def _damaged_variants(data: bytes):
    """Seeded damage of a real checkpoint: random bytes of many lengths, truncations, bit flips."""
    rng = random.Random(0)
    for length in (0, 1, 2, 3, 4, 7, 8, 31, 64, 100, 512, 4096, 65536):
        yield f"random {length} bytes", rng.randbytes(length)
    yield "zip magic, then garbage", b"PK\x03\x04" + rng.randbytes(2000)
    for offset in sorted({*range(0, 64, 7), *rng.sample(range(len(data)), 40), len(data) - 1}):
        yield f"truncated at {offset}", data[:offset]
    for position in rng.sample(range(len(data) * 8), 150):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        yield f"bit {position} flipped", bytes(flipped)


def test_damaged_checkpoints_raise_only_checkpoint_errors(tmp_path, runner_checkpoint):
    """Whatever torch raises inside, a caller sees a CheckpointError that names the file."""
    source, _ = runner_checkpoint
    path = tmp_path / "damaged.pth"
    outcomes = collections.Counter()
    for name, damaged in _damaged_variants(open(source, "rb").read()):
        path.write_bytes(damaged)
        try:
            mmseg_aspp.load_checkpoint_file(path)
        except mmseg_aspp.checkpoint.DamagedCheckpointError as err:
            message = str(err)
            assert "damaged.pth" in message and f"({len(damaged)} bytes)" in message, (name, message)
            assert "truncated, corrupt" in message, (name, message)
            outcomes["damaged"] += 1
        except mmseg_aspp.checkpoint.UnsafeCheckpointError as err:
            assert "damaged.pth" in str(err), name  # a flipped bit renamed a global
            outcomes["unsafe"] += 1
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"{name}: {type(err).__name__} escaped: {err}")
        else:
            outcomes["loaded"] += 1  # a flip inside tensor data or padding changes no structure
        if name.startswith(("random", "truncated")):
            assert outcomes["loaded"] == 0, f"{name} loaded"
    assert outcomes["damaged"] > 60, outcomes


def test_state_dict_mismatch_names_keys_and_shapes():
    model = _HeadOnly()
    state = dict(model.state_dict())
    state["head.conv_seg.weight"] = torch.zeros(7, 8, 1, 1)
    del state["head.bottleneck.conv.weight"]
    with pytest.raises(mmseg_aspp.checkpoint.CheckpointMismatchError) as err:
        mmseg_aspp.checkpoint.check_state_dict_matches(model, state, "x.pth")
    message = str(err.value)
    assert "head.conv_seg.weight: checkpoint (7, 8, 1, 1), model (3, 8, 1, 1)" in message
    assert "num_classes" in message and "missing from the checkpoint: head.bottleneck.conv.weight" in message
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # a DDP-saved file
    mmseg_aspp.checkpoint.check_state_dict_matches(model, state, "x.pth")


def test_a_crash_while_saving_never_leaves_a_complete_looking_checkpoint(tmp_path, monkeypatch):
    from mmengine.fileio.backends import LocalBackend

    from mmseg_aspp.runner import ReliableRunner, latest_checkpoint

    real_put = LocalBackend.put

    def put_then_crash(self, obj, filepath):
        if "iter_4" in str(filepath):  # the second save dies half-way through the write
            with open(filepath, "wb") as f:
                f.write(obj[: len(obj) // 2])
            raise KeyboardInterrupt
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put_then_crash)
    runner = ReliableRunner(
        model=_HeadOnly(),
        work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_Pairs(), sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=2, collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        default_scope="mmseg",
        experiment_name=f"crash_{os.getpid()}",
    )
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    assert {".iter_4.pth.partial", "iter_2.pth"} <= set(os.listdir(tmp_path))
    assert not (tmp_path / "iter_4.pth").exists()
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "iter_2.pth")
    mmseg_aspp.load_checkpoint_file(tmp_path / "iter_2.pth")  # complete
