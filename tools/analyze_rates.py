#!/usr/bin/env python
"""How much of each ASPP branch's 3x3 filter reads the feature map (DeepLabV3, Sec. 3.3).

    python tools/analyze_rates.py CONFIG [--infer-size H W] [--plot OUT.png [--map-size 65]]

For the training crop and an inference size, prints per atrous rate the share
of filter taps that land on the feature map and flags branches whose rate
reaches the map size: their outer taps read only zero padding, so they act as
1x3, 3x1 or 1x1 convolutions. ``--plot`` redraws the paper's Fig. 4.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Sequence

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), ".."))

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from torch import nn  # noqa: E402

from mmseg_aspp.atrous.geometry import (  # noqa: E402
    effective_kernel,
    valid_tap_fraction,
    valid_weight_counts,
)

PLOTTED_COUNTS = (1, 4, 9)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Valid-tap analysis of a config's ASPP rates")
    parser.add_argument("config", help="config file path")
    parser.add_argument("--infer-size", nargs=2, type=int, metavar=("H", "W"),
                        help="inference input size (default: slide-window crop, else the test "
                             "pipeline's Resize scale, else the training crop)")
    parser.add_argument("--plot", metavar="OUT.png", help="draw valid-weight counts against the rate")
    parser.add_argument("--map-size", type=int, default=65,
                        help="side of the square feature map for --plot (default: 65)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    return parser.parse_args(argv)


def load_model_on_meta(cfg: Config) -> nn.Module:
    """Build the segmentor without allocating weights (shapes only).

    Args:
        cfg: A loaded config; SyncBN in its model becomes BN.
    """
    from mmseg.registry import MODELS

    from mmseg_aspp.runtime import replace_sync_bn

    init_default_scope(cfg.get("default_scope", "mmseg"))
    with torch.device("meta"):
        return MODELS.build(replace_sync_bn(cfg.model)).eval()


def feature_size(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """(H, W) of the map the decode head reads for an input of ``height`` x ``width``.

    Args:
        model: An mmseg ``EncoderDecoder``, possibly on the meta device.
        height: Input height.
        width: Input width.
    """
    image = torch.empty(1, 3, height, width, device=next(model.parameters()).device)
    with torch.no_grad():
        feature = model.decode_head._transform_inputs(model.extract_feat(image))
    return tuple(feature.shape[-2:])


def _pipeline_resize(pipeline: Sequence[dict]) -> dict | None:
    return next((t for t in pipeline or () if t.get("type") == "Resize" and t.get("scale")), None)


def crop_size(cfg: Config) -> tuple[int, int]:
    """The training crop (H, W): ``crop_size``, else the data preprocessor's ``size``.

    Args:
        cfg: A loaded config.
    """
    size = cfg.get("crop_size") or cfg.model.get("data_preprocessor", {}).get("size")
    if not size:
        sys.exit(f"{cfg.filename}: no crop_size or model.data_preprocessor.size to take the "
                 f"training crop from; add crop_size = (H, W) to the config")
    return tuple(size)


def inference_size(cfg: Config, args: argparse.Namespace) -> tuple[tuple[int, int], str]:
    """Input size (H, W) the model sees at test time, and where it came from.

    Args:
        cfg: A loaded config.
        args: Parsed arguments (``infer_size`` wins when given).
    """
    if args.infer_size:
        return tuple(args.infer_size), "--infer-size"
    test_cfg = cfg.model.get("test_cfg") or {}
    if test_cfg.get("mode") == "slide":
        return tuple(test_cfg["crop_size"]), "slide-inference window"
    pipeline = cfg.get("test_pipeline") or cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline")
    resize = _pipeline_resize(pipeline)
    if resize:
        scale = resize["scale"]
        width, height = (scale, scale) if isinstance(scale, int) else scale  # mmcv scales are (w, h)
        note = (", keep_ratio: exact for images of that aspect ratio, else pass --infer-size"
                if resize.get("keep_ratio") else "")
        return (height, width), f"test Resize scale={scale}{note}"
    return crop_size(cfg), "training crop (no test Resize)"


def branch_kernel(height: int, width: int, rate: int) -> str:
    """What a branch's filter acts as on a map, e.g. ``"3x3"`` or ``"1x3 DEGENERATE (...)"``.

    Args:
        height: Feature-map height.
        width: Feature-map width.
        rate: The branch's atrous rate (1: the 1x1 branch).
    """
    if rate == 1:
        return "1x1 (rate-1 branch)"
    rows, cols, _ = effective_kernel(height, width, rate)
    shape = f"{rows.stop - rows.start}x{cols.stop - cols.start}"
    reason = {
        "1x3": f"rate >= map height {height}",
        "3x1": f"rate >= map width {width}",
        "1x1": f"rate >= map height {height} and width {width}",
    }.get(shape)
    return f"{shape} DEGENERATE ({reason})" if reason else shape


def tap_share(height: int, width: int, rate: int) -> float:
    """Share of (output position, filter tap) pairs that read the map.

    Args:
        height: Feature-map height.
        width: Feature-map width.
        rate: The branch's atrous rate (1: the 1x1 branch, always 100 %).
    """
    if rate == 1:
        return 1.0
    return valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)


def rate_table(rates: Sequence[int], sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Markdown table: per rate and map size, the valid-tap share and the kernel it acts as.

    Args:
        rates: The ASPP branches' rates.
        sizes: Column-group name -> feature-map (H, W).
    """
    header = ["rate"]
    for name, (h, w) in sizes.items():
        header += [f"{name} {h}x{w}: valid taps", f"{name}: acts as"]
    lines = ["| " + " | ".join(header) + " |", "|---:" + "|---:|---" * len(sizes) + "|"]
    for rate in rates:
        cells = [str(rate)]
        for h, w in sizes.values():
            cells += [f"{100 * tap_share(h, w, rate):.1f}%", branch_kernel(h, w, rate)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib, which is not installed; run: pip install matplotlib")
    return plt


def plot_valid_weights(path: str, map_size: int, rates: Sequence[int], title: str) -> None:
    """The paper's Fig. 4: share of positions with exactly 1, 4 and 9 valid weights vs rate.

    Args:
        path: Output PNG.
        map_size: Side of the square feature map.
        rates: Rates to mark with vertical lines (rate 1 is skipped).
        title: What the marked rates are, for the title.
    """
    plt = _pyplot()
    xs = list(range(1, max(map_size, *rates) + 6))
    counts = [valid_weight_counts(map_size, map_size, r) for r in xs]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k in PLOTTED_COUNTS:
        ax.plot(xs, [c[k] for c in counts], label=f"{k} valid weight{'s' * (k > 1)}", linewidth=2)
    ax.plot(xs, [tap_share(map_size, map_size, r) for r in xs], "k--", linewidth=1,
            label="mean valid fraction")
    for rate in sorted(set(r for r in rates if r > 1)):
        ax.axvline(rate, color="grey", linestyle=":", linewidth=1)
        ax.text(rate + 0.5, 1.02, str(rate), ha="left", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("atrous rate")
    ax.set_ylabel("normalised count")
    ax.set_ylim(0, 1.08)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_title(f"Valid weights of a 3x3 filter on a {map_size}x{map_size} feature map\n"
                 f"(dotted: {title})", fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        sys.exit(f"config not found: {args.config}")
    if args.map_size < 1:
        sys.exit(f"--map-size must be positive; got {args.map_size}")
    if args.plot:
        _pyplot()  # fail before the analysis if matplotlib is missing
    cfg = Config.fromfile(args.config)  # imports mmseg_aspp through custom_imports
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = load_model_on_meta(cfg)
    head = model.decode_head
    rates = getattr(head, "dilations", None)
    if not rates:
        sys.exit(f"{args.config}: decode head {type(head).__name__} has no atrous rates "
                 f"('dilations'); this analysis is for ASPP heads")

    crop = crop_size(cfg)
    infer, source = inference_size(cfg, args)
    crop_feature, infer_feature = feature_size(model, *crop), feature_size(model, *infer)
    stride = round(crop[0] / crop_feature[0])
    print(f"config: {args.config}")
    print(f"decode head: {cfg.model.decode_head.type}, rates {tuple(rates)}, "
          f"reads backbone output {head.in_index}")
    print(f"train crop {crop[0]}x{crop[1]} -> feature map {crop_feature[0]}x{crop_feature[1]} "
          f"(output stride {stride})")
    print(f"inference {infer[0]}x{infer[1]} ({source}) -> feature map {infer_feature[0]}x{infer_feature[1]}")
    print()
    print("\n".join(rate_table(rates, {"train": crop_feature, "inference": infer_feature})))
    degenerate = [f"rate {r} at {name} ({branch_kernel(*size, r).split()[0]})"
                  for name, size in (("train", crop_feature), ("inference", infer_feature))
                  for r in rates if "DEGENERATE" in branch_kernel(*size, r)]
    print()
    print("degenerate branches: " + ("; ".join(degenerate) if degenerate else "none"))
    if args.plot:
        plot_valid_weights(args.plot, args.map_size, rates, f"rates of {osp.basename(args.config)}")
        print(f"plot written to {osp.abspath(args.plot)}")


if __name__ == "__main__":
    main()
