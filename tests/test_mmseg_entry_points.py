"""mmseg's own entry points with our configs: its inference APIs and its tools/test.py."""
import glob
import os
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.apis import MMSegInferencer, inference_model, init_model, show_result_pyplot
from mmseg.apis.utils import _preprare_data

from tooling import DEMO_CS, MMSEG_TOOLS, ROOT, load_tool, run_tool, small_config

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
SHIPPED = [path for path in SHIPPED if "_base_" not in path]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of two photos-to-be of different sizes."""
    folder = tmp_path_factory.mktemp("images")
    gen = np.random.default_rng(0)
    for name, shape in (("a.png", (96, 160, 3)), ("b.jpg", (120, 90, 3))):
        cv2.imwrite(str(folder / name), gen.integers(0, 256, shape, dtype=np.uint8))
    return folder


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_every_shipped_config_fits_mmsegs_inference_pipelines(config, images):
    """The transform names mmseg's inference code looks for are there, and its pipelines run."""
    cfg = Config.fromfile(config)
    data, _ = _preprare_data(str(images / "a.png"), SimpleNamespace(cfg=cfg))  # inference_model's pipeline
    assert "gt_sem_seg" not in data["data_samples"][0]  # the annotation loader was dropped
    inferencer = MMSegInferencer.__new__(MMSegInferencer)
    pipeline = inferencer._init_pipeline(Config.fromfile(config))  # MMSegInferencer's pipeline
    assert pipeline(str(images / "a.png"))["inputs"].shape[0] == 3


@pytest.fixture  # per test: inference_model on an array rewrites the model's pipeline config
def model(trained_demo):
    return init_model(trained_demo.config, str(trained_demo.work_dir / "iter_4.pth"), device="cpu")


def test_inference_model_on_paths_and_arrays(model, images):
    path = str(images / "a.png")
    result = inference_model(model, path)
    assert result.pred_sem_seg.data.shape == (1, 96, 160)
    batch = inference_model(model, [path, path])  # mmseg batches only images of one size
    assert all(torch.equal(r.pred_sem_seg.data, result.pred_sem_seg.data) for r in batch)
    # Arrays last: mmseg switches the model's pipeline to its array loader for good.
    from_array = inference_model(model, cv2.imread(path))
    assert torch.equal(from_array.pred_sem_seg.data, result.pred_sem_seg.data)


def test_show_result_pyplot_writes_the_overlay(model, images, tmp_path):
    path = str(images / "b.jpg")
    out = tmp_path / "overlay.png"
    drawn = show_result_pyplot(model, path, inference_model(model, path), show=False, out_file=str(out))
    assert drawn.shape == (120, 90, 3) and out.is_file()


def test_mmseg_inferencer_on_an_image_and_a_folder(trained_demo, model, images, tmp_path):
    inferencer = MMSegInferencer(model=trained_demo.config, weights=str(trained_demo.work_dir / "iter_4.pth"),
                                 device="cpu")
    single = inferencer(str(images / "a.png"), return_datasamples=True)
    expected = inference_model(model, str(images / "a.png")).pred_sem_seg.data
    assert torch.equal(single.pred_sem_seg.data, expected)  # both APIs, one prediction

    inferencer(str(images), out_dir=str(tmp_path / "out"))
    written = {os.path.relpath(p, tmp_path / "out") for p in glob.glob(str(tmp_path / "out" / "**" / "*.*"),
                                                                         recursive=True)}
    assert written == {"vis/a.png", "vis/b.jpg", "pred/00000000_pred.png", "pred/00000001_pred.png"}, written


# ----------------------------------------------------------------- mmseg's tools/test.py
class _RunsCommand:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_mmseg_test_tool_refuses_code_and_mismatched_checkpoints(tmp_path, trained_demo):
    """mmseg's tools/test.py builds a plain Runner; importing mmseg_aspp and the configs'
    hooks still keep checkpoint code from running and name mismatched parameters."""
    test_tool = os.path.join(MMSEG_TOOLS, "test.py")
    weights = torch.load(trained_demo.work_dir / "iter_4.pth", weights_only=True)["state_dict"]
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": weights, "meta": {"note": _RunsCommand(f"touch {marker}")}}, evil)
    proc = run_tool(test_tool, trained_demo.config, str(evil), "--work-dir", str(tmp_path / "t1"), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "refusing to load" in output and "posix.system" in output, output[-3000:]
    assert not marker.exists()

    good = tmp_path / "good.pth"
    torch.save({"state_dict": weights}, good)
    proc = run_tool(test_tool, trained_demo.config, str(good), "--work-dir", str(tmp_path / "t2"),
                    "--cfg-options", "model.decode_head.num_classes=7", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "does not fit" in output and "decode_head.conv_seg.weight" in output, \
        output[-3000:]


def test_mmseg_test_tool_names_an_unreadable_label_map(tmp_path, data_root, trained_demo):
    shutil.copytree(data_root / "cityscapes", tmp_path / "data" / "cityscapes")
    label = sorted(glob.glob(str(tmp_path / "data" / "cityscapes" / "gtFine" / "val" / "*" / "*.png")))[0]
    with open(label, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really a png")
    config = small_config(tmp_path, DEMO_CS, tmp_path / "data")
    proc = run_tool(os.path.join(MMSEG_TOOLS, "test.py"), config, str(trained_demo.work_dir / "iter_4.pth"),
                    "--work-dir", str(tmp_path / "t"), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"cannot read label map {label}" in output, output[-3000:]


# ----------------------------------------------------------------- tools/infer.py
def test_infer_tool_on_an_image_a_folder_and_a_video(tmp_path, trained_demo, images):
    infer = load_tool("infer")
    checkpoint = str(trained_demo.work_dir / "iter_4.pth")
    infer.main([trained_demo.config, checkpoint, str(images / "a.png"), "--out-dir", str(tmp_path / "one")])
    assert cv2.imread(str(tmp_path / "one" / "a.png")).shape == (96, 160, 3)

    infer.main([trained_demo.config, checkpoint, str(images), "--out-dir", str(tmp_path / "all"), "--save-labels"])
    assert sorted(os.listdir(tmp_path / "all")) == ["a.png", "a_labels.png", "b.png", "b_labels.png"]
    labels = cv2.imread(str(tmp_path / "all" / "b_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (120, 90) and labels.max() < 19

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 96))
    for name in ("a.png", "a.png", "a.png"):
        writer.write(cv2.imread(str(images / name)))
    writer.release()
    infer.main([trained_demo.config, checkpoint, str(video), "--out-dir", str(tmp_path / "video")])
    capture = cv2.VideoCapture(str(tmp_path / "video" / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3

    with pytest.raises(SystemExit, match="input not found"):
        infer.main([trained_demo.config, checkpoint, str(tmp_path / "nowhere.png")])
