"""Valid-weight counting (DeepLabV3 Fig. 4) and tools/analyze_rates.py."""
from collections import Counter

import pytest

from mmseg_aspp.atrous import valid_tap_fraction
from mmseg_aspp.atrous.geometry import axis_tap_counts, valid_weight_counts
from tooling import DEMO_CS, DEMO_CS_PLUS, ROOT, load_tool

pytestmark = pytest.mark.stack_independent  # geometry and plotting


def brute_force_counts(height, width, rate):
    """Enumerate every output position and tap of a 3x3 filter at ``rate``."""
    histogram = Counter()
    for y in range(height):
        for x in range(width):
            histogram[sum(0 <= y + dy * rate < height and 0 <= x + dx * rate < width
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1))] += 1
    return {k: n / (height * width) for k, n in histogram.items()}


@pytest.mark.parametrize("height, width, rate", [
    (1, 1, 1), (1, 7, 2), (5, 5, 2), (7, 12, 5), (12, 7, 9), (16, 32, 18),
    (65, 65, 1), (65, 65, 12), (65, 65, 32), (65, 65, 33), (65, 65, 40), (65, 65, 64), (65, 65, 65),
    (65, 65, 80),
])
def test_valid_weight_counts_match_brute_force(height, width, rate):
    counts = valid_weight_counts(height, width, rate)
    expected = brute_force_counts(height, width, rate)
    assert set(expected) <= set(counts)
    for k, share in counts.items():
        assert share == pytest.approx(expected.get(k, 0.0), abs=1e-12), k
    mean = sum(k * share for k, share in counts.items()) / 9
    assert mean == pytest.approx(valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate))


def test_figure_end_points():
    assert valid_weight_counts(65, 65, 1)[9] == pytest.approx((63 / 65) ** 2)
    assert valid_weight_counts(65, 65, 65)[1] == 1.0
    assert valid_weight_counts(65, 65, 33)[9] == 0.0  # no position reaches both sides past rate 32
    assert axis_tap_counts(10, 3) == (0, 6, 4)
    with pytest.raises(ValueError, match="must be positive"):
        axis_tap_counts(0, 3)


@pytest.fixture(scope="module")
def tool():
    return load_tool("analyze_rates")


def test_cli_table_flags_degenerate_branches(tool, capsys):
    tool.main([DEMO_CS, "--infer-size", "64", "64"])
    out = capsys.readouterr().out
    # 96x192 crop at output stride 8 -> 12x24; 64x64 -> 8x8
    assert "train crop 96x192 -> feature map 12x24 (output stride 8)" in out
    assert "inference 64x64 (--infer-size) -> feature map 8x8" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    # rate 6: (12 + 2*6)/36 * (24 + 2*18)/72 = 55.6% at train; (8 + 2*2)/24 squared = 25% on 8x8
    assert "| 6 | 55.6% | 3x3 | 25.0% | 3x3 |" in out
    assert "1x3 DEGENERATE (rate >= map height 12)" in rows["18"]
    assert "1x1 DEGENERATE (rate >= map height 8 and width 8)" in rows["12"]
    assert "degenerate branches: rate 12 at train (1x3); rate 18 at train (1x3); rate 12 at inference (1x1); " \
           "rate 18 at inference (1x1)" in out


def test_cli_default_inference_size_and_plot(tool, tmp_path, capsys):
    plot = tmp_path / "valid.png"
    tool.main([DEMO_CS, "--plot", str(plot), "--map-size", "33"])
    out = capsys.readouterr().out
    assert "inference 256x512 (test Resize scale=(512, 256)" in out
    assert "-> feature map 32x64" in out
    assert f"plot written to {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_inference_size_sources(tool):
    from argparse import Namespace

    from mmengine.config import Config

    slide = Config(dict(crop_size=(769, 769), model=dict(test_cfg=dict(mode="slide", crop_size=(769, 769)))))
    assert tool.inference_size(slide, Namespace(infer_size=None)) == ((769, 769), "slide-inference window")
    resize = Config(dict(crop_size=(64, 64), model=dict(test_cfg=dict(mode="whole")),
                         test_pipeline=[dict(type="Resize", scale=(300, 200), keep_ratio=False)]))
    expected = ((200, 300), "test Resize scale=(300, 200)")  # mmcv scales are (w, h)
    assert tool.inference_size(resize, Namespace(infer_size=None)) == expected
    assert tool.inference_size(resize, Namespace(infer_size=[5, 7])) == ((5, 7), "--infer-size")
    resize.test_pipeline = [dict(type="Resize", scale_factor=0.5)]
    assert tool.inference_size(resize, Namespace(infer_size=None))[0] == (64, 64)


def test_cli_errors(tool):
    with pytest.raises(SystemExit, match="config not found: nope.py"):
        tool.main(["nope.py"])
    with pytest.raises(SystemExit, match="--map-size must be positive"):
        tool.main([DEMO_CS, "--plot", "x.png", "--map-size", "0"])


def test_cli_reads_a_deeplabv3plus_config(tool, capsys):
    tool.main([DEMO_CS_PLUS, "--infer-size", "64", "64"])
    out = capsys.readouterr().out
    assert "decode head: mmseg_aspp.DepthwiseSeparableASPPHead, rates (1, 6, 12, 18), reads backbone output 3" in out
    assert "train crop 96x192 -> feature map 12x24 (output stride 8)" in out


def test_cli_lists_backbone_blocks_and_warns_where_the_cascade_degenerates(tool, tmp_path, capsys):
    from test_cascade import DEMO

    plot = tmp_path / "blocks.png"
    tool.main([DEMO, "--infer-size", "96", "192", "--plot-blocks", str(plot)])
    out = capsys.readouterr().out
    assert "train crop 96x192 -> feature map 6x12 (output stride 16)" in out
    # The quarter-width ResNet-18: two units a block; block4 at rate 2 with multi-grid (1, 2, 1),
    # each cascaded block doubling it, all on the 6x12 map.
    assert "| layer4 | 2, 4 | 6x12 |" in out and "| layer7 | 16, 32 | 6x12 | 11% (x2) | 1x1 |" in out
    assert "WARNING: degenerate backbone units" in out and "layer7 unit 2 rate 32 (1x1 on 6x12)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_a_config_whose_head_has_no_rates(tool, capsys):
    config = f"{ROOT}/configs/deeplabv3_cascade/cascade_r50-d16-block7-mg121_4xb4-20k_voc12aug-512x512.py"
    tool.main([config, "--infer-size", "512", "512"])
    out = capsys.readouterr().out
    assert "decode head: FCNHead, no atrous rates, reads backbone output 3" in out
    assert "| layer7 | 16, 32, 16 | 32x32 |" in out
