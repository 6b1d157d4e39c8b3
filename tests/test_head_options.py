"""Paper options of the head: output stride, pooling-branch norm, degenerate-branch warning."""
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_aspp.models.aspp_head as aspp_head_module
from helpers import head_cfg, randomize_, twin_heads
from mmseg_aspp.models.aspp_head import BatchOfOneError
from mmseg_aspp.output_stride import resnet_strides_and_dilations, set_output_stride
from tooling import ROOT

D16 = f"{ROOT}/configs/deeplabv3/deeplabv3_r101-d16-mg124_4xb2-80k_cityscapes-512x1024.py"
D16_TWIN = D16.replace("/deeplabv3/", "/deeplabv3_upstream/")


@pytest.mark.parametrize("output_stride, rates", [(16, (1, 6, 12, 18)), (8, (1, 12, 24, 36)), (32, (1, 3, 6, 9))])
def test_rates_scale_with_16_over_output_stride(output_stride, rates):
    head = MODELS.build(head_cfg("ours", dilations=(1, 6, 12, 18), output_stride=output_stride))
    assert head.dilations == rates


def test_output_stride_head_equals_upstream_at_the_scaled_rates():
    ours = MODELS.build(head_cfg("ours", dilations=(1, 6, 12, 18), output_stride=8)).eval()
    _, upstream = twin_heads(dilations=(1, 12, 24, 36))
    ours.load_state_dict(upstream.state_dict(), strict=True)
    x = torch.randn(2, 16, 29, 37)
    with torch.no_grad():
        torch.testing.assert_close(ours([x]), upstream.eval()([x]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [12, 0])
def test_bad_output_stride_is_refused(bad):
    with pytest.raises(ValueError, match="output_stride"):
        MODELS.build(head_cfg("ours", output_stride=bad))


def test_rates_that_do_not_scale_are_refused():
    with pytest.raises(ValueError, match="whole rates"):
        MODELS.build(head_cfg("ours", dilations=(1, 6, 9), output_stride=32))


def test_resnet_strides_and_dilations_match_the_shipped_recipes():
    assert resnet_strides_and_dilations(8) == ((1, 2, 1, 1), (1, 1, 2, 4))  # the -d8 configs
    assert resnet_strides_and_dilations(16) == ((1, 2, 2, 1), (1, 1, 1, 2))  # the -d16 configs
    assert resnet_strides_and_dilations(32) == ((1, 2, 2, 2), (1, 1, 1, 1))


@pytest.mark.parametrize("config", [D16, D16_TWIN])
def test_os16_model_evaluates_at_os8_with_the_same_weights(config):
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    cfg.model.backbone.depth = 50  # same strides, dilations and multi-grid; quicker to build
    cfg.model.backbone.norm_cfg = cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type="BN")
    os16 = MODELS.build(cfg.model).eval()
    assert set_output_stride(cfg.model, 8) == 16
    assert tuple(cfg.model.decode_head.dilations) == (1, 12, 24, 36)
    os8 = MODELS.build(cfg.model).eval()
    missing, unexpected = os8.load_state_dict(os16.state_dict(), strict=True)
    assert not missing and not unexpected
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert os16.extract_feat(image)[3].shape[-2:] == (4, 6)
        assert os8.extract_feat(image)[3].shape[-2:] == (8, 12)
        assert os8.encode_decode(image, [dict(img_shape=(64, 96))]).shape == (1, 19, 64, 96)


def test_batch_of_one_with_pooling_batch_norm_says_what_to_change():
    ours, upstream = twin_heads()
    x = torch.randn(1, 16, 9, 9)
    with pytest.raises(ValueError, match="Expected more than 1 value"):  # torch's message upstream
        upstream.train()([x])
    with pytest.raises(BatchOfOneError, match="pool_norm_cfg=None"):
        ours.train()([x])
    ours.eval()([x])  # inference with one image is fine


@pytest.mark.parametrize("pool_norm_cfg, keys", [
    (None, {"image_pool.1.conv.weight", "image_pool.1.conv.bias"}),
    (dict(type="GN", num_groups=4), {"image_pool.1.conv.weight", "image_pool.1.gn.weight", "image_pool.1.gn.bias"}),
])
def test_pooling_branch_without_batch_norm_trains_on_one_image(pool_norm_cfg, keys):
    head = MODELS.build(head_cfg("ours", pool_norm_cfg=pool_norm_cfg)).train()
    randomize_(head)
    assert {k for k in head.state_dict() if k.startswith("image_pool")} == keys
    logits = head([torch.randn(1, 16, 9, 9)])
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.image_pool.parameters())


def test_one_by_one_map_with_one_image_is_refused_in_training():
    head = MODELS.build(head_cfg("ours", pool_norm_cfg=None)).train()
    with pytest.raises(BatchOfOneError, match="1x1 feature map"):
        head([torch.randn(1, 16, 1, 1)])


def test_degenerate_branches_warn_once(monkeypatch):
    messages = []
    monkeypatch.setattr(aspp_head_module, "print_log", lambda msg, **kw: messages.append(msg))
    head = MODELS.build(head_cfg("ours", dilations=(1, 12, 24, 36))).eval()
    with torch.no_grad():
        for _ in range(3):
            head([torch.randn(1, 16, 16, 16)])
        head([torch.randn(1, 16, 64, 64)])  # nothing degenerates
        head([torch.randn(1, 16, 20, 20)])  # 24 and 36 again: already reported
    assert len(messages) == 1
    assert "rate 24 as a 1x1 conv" in messages[0] and "rate 36 as a 1x1 conv" in messages[0]
    assert "rate 12" not in messages[0]
    head([torch.randn(1, 16, 20, 40)])  # a new kind: 24 becomes 1x3 on a 20x40 map
    assert len(messages) == 2 and "rate 24 as a 1x3 conv" in messages[1]
