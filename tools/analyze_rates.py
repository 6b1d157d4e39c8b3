#!/usr/bin/env python
"""How much of each atrous 3x3 filter reads the feature map (DeepLabV3, Sec. 3.2 and 3.3).

    python tools/analyze_rates.py CONFIG [--infer-size H W] [--plot OUT.png [--map-size 65]]
        [--plot-blocks OUT.png]

For the training crop and an inference size, prints per ASPP rate (atrous convolution in
parallel) and per backbone block and unit (in cascade: ResNet's dilated blocks and any blocks
cascaded after block4) the share of filter taps that land on the feature map, and flags filters
whose rate reaches the map size: their outer taps read only zero padding, so they act as 1x3,
3x1 or 1x1 convolutions. ``--plot`` redraws the paper's Fig. 4, ``--plot-blocks`` draws the rate
of every backbone unit against the map it runs on.
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
from mmseg_aspp.models.cascade import atrous_conv  # noqa: E402

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
    parser.add_argument("--plot-blocks", metavar="OUT.png",
                        help="draw every backbone unit's rate and valid-tap share at the inference size")
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


def block_rates(model: nn.Module, height: int, width: int) -> list[tuple[str, int, int, tuple[int, int]]]:
    """``(block, unit, rate, map size)`` of every backbone unit's atrous 3x3 convolution for an
    input of ``height`` x ``width`` (a bottleneck's second convolution, a basic block's first).

    Args:
        model: An mmseg ``EncoderDecoder`` with a ResNet-family backbone, possibly on meta.
    """
    backbone = model.backbone
    found, handles = [], []
    for name in getattr(backbone, "res_layers", ()):
        for index, unit in enumerate(getattr(backbone, name)):
            conv = atrous_conv(unit)

            def record(module, inputs, name=name, index=index):
                found.append((name, index, module.dilation[0], tuple(inputs[0].shape[-2:])))

            handles.append(conv.register_forward_pre_hook(record))
    image = torch.empty(1, 3, height, width, device=next(model.parameters()).device)
    with torch.no_grad():
        backbone(image)
    for handle in handles:
        handle.remove()
    return found


def block_table(units: Sequence[tuple[str, int, int, tuple[int, int]]]) -> list[str]:
    """Markdown table, one row per block: its units' rates, the map, valid taps and what they act as."""
    lines = ["| block | unit rates | map | valid taps per unit | acts as |", "|---|---|---|---|---|"]
    for block in dict.fromkeys(name for name, *_ in units):
        rows = [(rate, size) for name, _, rate, size in units if name == block]
        size = rows[-1][1]
        shares = [f"{100 * valid_tap_fraction(s[0], r) * valid_tap_fraction(s[1], r):.0f}%" for r, s in rows]
        kinds = sorted({branch_kernel(*s, r).split()[0] for r, s in rows if r > 1}) or ["3x3"]
        lines.append(f"| {block} | {_runs([str(r) for r, _ in rows])} | {size[0]}x{size[1]} | {_runs(shares)} | "
                     f"{', '.join(kinds)} |")
    return lines


def _runs(values: Sequence[str]) -> str:
    """``a, b, b, b`` written ``a, b (x3)``."""
    out: list[list] = []
    for value in values:
        if out and out[-1][0] == value:
            out[-1][1] += 1
        else:
            out.append([value, 1])
    return ", ".join(value if count == 1 else f"{value} (x{count})" for value, count in out)


def plot_block_rates(path: str, units: Sequence[tuple[str, int, int, tuple[int, int]]], title: str) -> None:
    """Each backbone unit's rate (bars, log scale) against the height and width of its map (lines),
    with the share of its taps that read the map."""
    plt = _pyplot()
    labels = [f"{name.replace('layer', 'block')}.{index + 1}" for name, index, _, _ in units]
    rates = [rate for _, _, rate, _ in units]
    fig, ax = plt.subplots(figsize=(max(7, 0.28 * len(units)), 4.2))
    colours = ["tab:red" if "DEGENERATE" in branch_kernel(*size, rate) else "tab:blue" if rate > 1 else "tab:gray"
               for _, _, rate, size in units]
    ax.bar(range(len(units)), rates, color=colours)
    ax.step(range(len(units)), [size[0] for *_, size in units], where="mid", color="black", linewidth=1,
            label="map height")
    ax.step(range(len(units)), [size[1] for *_, size in units], where="mid", color="black", linestyle="--",
            linewidth=1, label="map width")
    for i, (_, _, rate, size) in enumerate(units):
        if rate > 1:
            ax.text(i, rate * 1.08, f"{100 * tap_share(*size, rate):.0f}%", ha="center", fontsize=6, rotation=90)
    ax.set_yscale("log", base=2)
    ax.set_xticks(range(len(units)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("atrous rate (bars) / map side (lines)")
    ax.set_title(f"{title}\nred: the rate reaches the map, the 3x3 degenerates; labels: valid-tap share",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    if args.plot or args.plot_blocks:
        _pyplot()  # fail before the analysis if matplotlib is missing
    cfg = Config.fromfile(args.config)  # imports mmseg_aspp through custom_imports
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = load_model_on_meta(cfg)
    head = model.decode_head
    rates = tuple(getattr(head, "dilations", None) or ())

    crop = crop_size(cfg)
    infer, source = inference_size(cfg, args)
    crop_feature, infer_feature = feature_size(model, *crop), feature_size(model, *infer)
    stride = round(crop[0] / crop_feature[0])
    print(f"config: {args.config}")
    print(f"decode head: {cfg.model.decode_head.type}, "
          f"{f'rates {rates}' if rates else 'no atrous rates'}, reads backbone output {head.in_index}")
    print(f"train crop {crop[0]}x{crop[1]} -> feature map {crop_feature[0]}x{crop_feature[1]} "
          f"(output stride {stride})")
    print(f"inference {infer[0]}x{infer[1]} ({source}) -> feature map {infer_feature[0]}x{infer_feature[1]}")
    if rates:
        print()
        print("\n".join(rate_table(rates, {"train": crop_feature, "inference": infer_feature})))
        degenerate = [f"rate {r} at {name} ({branch_kernel(*size, r).split()[0]})"
                      for name, size in (("train", crop_feature), ("inference", infer_feature))
                      for r in rates if "DEGENERATE" in branch_kernel(*size, r)]
        print()
        print("degenerate branches: " + ("; ".join(degenerate) if degenerate else "none"))
    units = block_rates(model, *infer)
    if units:
        print()
        print(f"backbone blocks at inference {infer[0]}x{infer[1]}:")
        print("\n".join(block_table(units)))
        degenerate = [f"{name} unit {index + 1} rate {rate} ({branch_kernel(*size, rate).split()[0]} on {size[0]}x{size[1]})"
                      for name, index, rate, size in units if rate > 1 and "DEGENERATE" in branch_kernel(*size, rate)]
        print()
        if degenerate:
            print("WARNING: degenerate backbone units (their outer taps read only zero padding): "
                  + "; ".join(degenerate))
        else:
            print("degenerate backbone units: none")
    if args.plot_blocks:
        plot_block_rates(args.plot_blocks, units, f"backbone rates of {osp.basename(args.config)} at "
                         f"{infer[0]}x{infer[1]}")
        print(f"block plot written to {osp.abspath(args.plot_blocks)}")
    if args.plot:
        plot_valid_weights(args.plot, args.map_size, rates, f"rates of {osp.basename(args.config)}")
        print(f"plot written to {osp.abspath(args.plot)}")


if __name__ == "__main__":
    main()
