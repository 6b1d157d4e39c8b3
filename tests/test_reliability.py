"""Failure handling of the tools: unsafe or damaged checkpoints, bad data, kills, dead ranks."""
import glob
import json
import os
import re
import shutil
import signal
import time

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from mmseg_aspp import load_checkpoint_file
from tooling import DEMO_CS, MMSEG_TOOLS, TOOLS, free_port, load_tool, run_tool, small_config

TRAIN = os.path.join(TOOLS, "train.py")
TEST = os.path.join(TOOLS, "test.py")
MMSEG_TRAIN = os.path.join(MMSEG_TOOLS, "train.py")
MMSEG_TEST = os.path.join(MMSEG_TOOLS, "test.py")


class _RunsCommand:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The demo model's freshly initialised state_dict, as test.py would load it."""
    cfg = Config.fromfile(DEMO_CS)
    model = MODELS.build(cfg.model)
    return model.state_dict()


@pytest.fixture(scope="module")
def test_tool():
    """tools/test.py run in this process: its failures here are the ones a user sees, without
    paying a fresh interpreter per case (the subprocess runs below cover process-level behaviour)."""
    return load_tool("test")


def _fails(tool, *args, needles=()):
    """Run ``tool.main(args)``; it must end with one of our messages (SystemExit), not a traceback."""
    with pytest.raises(SystemExit) as ended:
        tool.main([str(a) for a in args])
    message = str(ended.value.code)
    assert message.startswith("error: "), message  # tool_session turned our error into a message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    return message


def test_checkpoint_that_runs_code_is_refused_unless_unsafe_load(tmp_path, data_root, weights, test_tool):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": weights, "meta": {"note": _RunsCommand(f"touch {marker}")}}, path)
    config = small_config(tmp_path, DEMO_CS, data_root)

    _fails(test_tool, config, path, "--work-dir", tmp_path / "safe",
           needles=("refusing to load", str(path), "posix.system", "--unsafe-load"))
    assert not marker.exists()
    assert not (tmp_path / "safe" / "test_metrics.json").exists()

    # The flag exists for trusted legacy files: the payload is real, and now runs.
    with pytest.warns(UserWarning, match="unsafe load"):
        test_tool.main([config, str(path), "--work-dir", str(tmp_path / "unsafe"), "--unsafe-load"])
    assert marker.exists()
    assert (tmp_path / "unsafe" / "test_metrics.json").exists()


def test_truncated_checkpoint_fails_clearly(tmp_path, data_root, weights, test_tool):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": weights}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    config = small_config(tmp_path, DEMO_CS, data_root)
    _fails(test_tool, config, path, "--work-dir", tmp_path / "t", needles=("cannot read checkpoint", str(path),
                                                                           "truncated"))
    assert not (tmp_path / "t" / "test_metrics.json").exists()


def test_checkpoint_for_other_num_classes_names_keys_and_shapes(tmp_path, data_root, weights, test_tool):
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": weights}, path)
    config = small_config(tmp_path, DEMO_CS, data_root)
    message = _fails(test_tool, config, path, "--work-dir", tmp_path / "t", "--cfg-options",
                     "model.decode_head.num_classes=7",
                     needles=("does not fit", "decode_head.conv_seg.weight", "num_classes"))
    assert re.search(r"checkpoint \(19, \d+, 1, 1\), model \(7, \d+, 1, 1\)", message)


def test_missing_dataset_directory_fails_before_building_anything(tmp_path, data_root, weights, test_tool):
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": weights}, path)
    config = small_config(tmp_path, DEMO_CS, data_root)
    missing = tmp_path / "nowhere"
    _fails(test_tool, config, path, "--work-dir", tmp_path / "t", "--cfg-options",
           f"test_dataloader.dataset.data_root={missing}", needles=("dataset path not found", str(missing),
                                                                     "data_root"))
    assert not (tmp_path / "t").exists()  # no runner was built


def test_corrupt_label_and_bad_values_name_the_file(tmp_path, data_root, weights, test_tool):
    root = tmp_path / "data"
    shutil.copytree(data_root / "cityscapes", root / "cityscapes")
    labels = sorted(glob.glob(str(root / "cityscapes" / "gtFine" / "val" / "*" / "*_labelTrainIds.png")))
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": weights}, path)
    config = small_config(tmp_path, DEMO_CS, tmp_path / "data")

    with open(labels[0], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really a png")
    _fails(test_tool, config, path, "--work-dir", tmp_path / "t", needles=("cannot read label map", labels[0]))
    assert not (tmp_path / "t" / "test_metrics.json").exists()

    import cv2
    import numpy as np

    cv2.imwrite(labels[0], np.full((64, 64), 40, np.uint8))
    _fails(test_tool, config, path, "--work-dir", tmp_path / "t", needles=(labels[0], "values [40]",
                                                                           "outside 0..18"))


def _final_miou(log):
    return re.findall(r"Iter\(val\).*mIoU: ([\d.]+)", log)[-1]


@pytest.mark.parametrize("entry", ["ours", "mmseg"])
def test_killed_training_resumes_to_the_same_weights_and_metrics(tmp_path, trained_demo, entry):
    """Killed after a checkpoint and resumed, by our tools/train.py or mmseg's own (which builds
    the runner our configs name), a run ends bitwise where an uninterrupted one did."""
    train = TRAIN if entry == "ours" else MMSEG_TRAIN
    ref, run = trained_demo.work_dir, tmp_path / "run"
    proc = run_tool(train, trained_demo.config, "--work-dir", str(run), env={"KILL_AT_ITER": "3"}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "iter_2.pth").exists() and not (run / "iter_4.pth").exists()
    (run / ".iter_4.pth.partial").write_bytes(b"half a checkpoint")  # as if killed mid-save

    log = run_tool(train, trained_demo.config, "--work-dir", str(run), "--resume")
    assert "iter_2.pth" in log
    expected = load_checkpoint_file(ref / "iter_4.pth")
    resumed = load_checkpoint_file(run / "iter_4.pth")
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key  # bitwise
    for a, b in zip(expected["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert _final_miou(log) == _final_miou(trained_demo.log)


@pytest.mark.parametrize("failure", ["dies", "hangs"])
def test_distributed_run_ends_when_a_rank_fails_and_resume_recovers(tmp_path, data_root, failure):
    timeout_s = 10  # of gloo's collectives: how long the surviving rank waits for a hung one
    config = small_config(tmp_path, DEMO_CS, data_root, iters=4,
                          extra=f"env_cfg = dict(dist_cfg=dict(backend='gloo', timeout={timeout_s}))")
    work = tmp_path / "work"
    env = {"KILL_AT_ITER": "3", "KILL_RANK": "1", "PORT": str(free_port())}
    if failure == "hangs":
        env["KILL_MODE"] = "hang"
    start = time.monotonic()
    proc = run_tool(os.path.join(TOOLS, "dist_train.sh"), config, "2", "--work-dir", str(work),
                    env=env, check=False, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, (proc.stdout + proc.stderr)[-3000:]
    assert elapsed < 150, f"the surviving rank took {elapsed:.0f} s to give up"
    assert (work / "iter_2.pth").exists() and not (work / "iter_4.pth").exists()
    if failure == "hangs":
        return  # what is left behind is the same as when a rank dies, and resumes alike

    run_tool(os.path.join(TOOLS, "dist_train.sh"), config, "2", "--work-dir", str(work), "--resume",
             env={"PORT": str(free_port())})
    records = [json.load(open(p)) for p in sorted(glob.glob(str(work / "rank*.json")))]
    assert [r["iters"] for r in records] == [4, 4]
