"""ONNX export: the plain ASPP path, and tools/export_onnx.py against PyTorch."""
import importlib.util
import os
import re

import onnx
import onnxruntime
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from helpers import randomize_, twin_heads
from mmseg_aspp.atrous import aspp_features
from mmseg_aspp.atrous.reference import aspp_features_reference
from tooling import DEMO_CS, DEMO_CS_PLUS, TOOLS, load_tool, run_tool

pytestmark = pytest.mark.stack_independent  # torch's ONNX exporters on the plain formula

TOOL = os.path.join(TOOLS, "export_onnx.py")
SHAPE = (64, 96)  # demo feature map 8x12: rates 12 and 18 reach past it


@pytest.fixture(scope="module")
def tool():
    return load_tool("export_onnx")


@pytest.fixture(scope="module")
def segmentor_and_checkpoint(tmp_path_factory):
    model = MODELS.build(Config.fromfile(DEMO_CS).model)
    randomize_(model, seed=3)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, str(path)


def _head_inputs(height, width, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, height, width, generator=gen)


def _plain(head, x):
    return aspp_features_reference(x, head.image_pool[1], head.aspp_modules, head.bottleneck)


# rates (1, 6, 12, 18): from every branch fully inside the map to all of them past it
@pytest.mark.parametrize("height, width", [(1, 1), (5, 5), (8, 20), (20, 8), (13, 19), (24, 24)])
def test_plain_path_equals_fast_path_and_mmseg(height, width):
    ours, upstream = twin_heads()
    ours.eval(), upstream.eval()
    x = _head_inputs(height, width)
    with torch.no_grad():
        plain = _plain(ours, x)
        fast = aspp_features(x, ours.image_pool[1], ours.aspp_modules, ours.dilations, ours.bottleneck)
        reference = upstream._forward_feature([x])
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


class _Features(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head._forward_feature([x])


def test_traced_head_holds_for_other_map_sizes():
    ours, _ = twin_heads()
    features = _Features(ours).eval()
    with torch.no_grad():
        # Traced where rates 12 and 18 degenerate to 1x1; run where none does.
        traced = torch.jit.trace(features, _head_inputs(8, 8), check_trace=False)
        x = _head_inputs(24, 30, batch=1, seed=1)
        torch.testing.assert_close(traced(x), features(x), atol=1e-5, rtol=0)


def _mmseg_logits(model, image):
    """Logits at input size from mmseg's own inference path (fast head)."""
    shape = tuple(image.shape[2:])
    metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * image.shape[0]
    with torch.no_grad():
        return model.encode_decode(image, metas)


def _max_diff(path, model, shape, seed=0):
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"image": image.numpy()})
    expected = _mmseg_logits(model, image)
    assert actual.shape == tuple(expected.shape)
    return float((torch.from_numpy(actual) - expected).abs().max())


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _input_dims(path):
    return _dims(onnx.load(path).graph.input[0])


def test_dynamic_export_cli_matches_pytorch_at_two_sizes(tmp_path, segmentor_and_checkpoint):
    model, checkpoint = segmentor_and_checkpoint
    out = str(tmp_path / "dynamic.onnx")
    log = run_tool(TOOL, DEMO_CS, checkpoint, "--out", out, "--shape", *map(str, SHAPE), "--dynamic", "--verify")
    assert f"wrote {out}" in log and "verify: ok" in log
    reported = [float(v) for v in re.findall(r"max \|onnxruntime - pytorch\| = (\S+)", log)]
    assert len(reported) == 2 and max(reported) < 1e-4

    assert _input_dims(out) == ["batch", 3, "height", "width"]
    assert _dims(onnx.load(out).graph.output[0]) == ["batch", 19, "height", "width"]
    for shape in [(1, 3, *SHAPE), (2, 3, 45, 77)]:
        assert _max_diff(out, model, shape) < 1e-4, shape


def test_static_export_matches_pytorch(tmp_path, tool, segmentor_and_checkpoint):
    model, checkpoint = segmentor_and_checkpoint
    out = str(tmp_path / "static.onnx")
    tool.main([DEMO_CS, checkpoint, "--out", out, "--shape", "40", "56", "--opset", "17"])
    assert _input_dims(out) == [1, 3, 40, 56]
    assert onnx.load(out).opset_import[0].version == 17
    assert _max_diff(out, model, (1, 3, 40, 56)) < 1e-4


def test_dynamo_exporter_dynamic(tmp_path, tool, segmentor_and_checkpoint):
    model, checkpoint = segmentor_and_checkpoint
    out = str(tmp_path / "dynamo.onnx")
    tool.main([DEMO_CS, checkpoint, "--out", out, "--shape", *map(str, SHAPE), "--dynamic",
               "--exporter", "dynamo"])
    assert _input_dims(out) == ["batch", 3, "height", "width"]
    for shape in [(1, 3, *SHAPE), (2, 3, 45, 77)]:
        assert _max_diff(out, model, shape) < 1e-4, shape


def test_clear_errors(tmp_path, tool, segmentor_and_checkpoint, monkeypatch):
    _, checkpoint = segmentor_and_checkpoint
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(SystemExit, match=f"checkpoint not found: {re.escape(missing)}"):
        tool.main([DEMO_CS, missing])
    with pytest.raises(SystemExit, match="config not found: nope.py"):
        tool.main(["nope.py", checkpoint])

    other = MODELS.build(Config.fromfile(DEMO_CS).model)
    state = other.state_dict()
    del state["decode_head.conv_seg.weight"]
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, wrong)
    expected = r"does not fit the model(.|\n)*missing from the checkpoint: decode_head\.conv_seg\.weight"
    with pytest.raises(SystemExit, match=expected):
        tool.main([DEMO_CS, str(wrong), "--out", str(tmp_path / "x.onnx")])

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="needs onnxruntime.*pip install onnx onnxruntime"):
        tool.main([DEMO_CS, checkpoint, "--verify"])


def test_deeplabv3plus_exports_and_matches_pytorch(tmp_path, tool):
    """The V3+ head's ASPP runs the plain formula under capture too; its decoder is mmseg's."""
    model = MODELS.build(Config.fromfile(DEMO_CS_PLUS).model)
    randomize_(model, seed=5)
    model.eval()
    checkpoint = tmp_path / "v3plus.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    out = str(tmp_path / "v3plus.onnx")
    tool.main([DEMO_CS_PLUS, str(checkpoint), "--out", out, "--shape", "64", "96", "--dynamic", "--verify"])
    assert _max_diff(out, model, (1, 3, 64, 96)) < 1e-4
    assert _max_diff(out, model, (2, 3, 72, 104)) < 1e-4  # another size: nothing was hard-wired
