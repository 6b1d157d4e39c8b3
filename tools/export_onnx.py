#!/usr/bin/env python
"""Export a segmentor (backbone + decode head + resize to input size) to ONNX.

    python tools/export_onnx.py CONFIG CHECKPOINT [--out FILE.onnx] [--shape H W]
        [--dynamic] [--opset N] [--exporter {torchscript,dynamo}] [--verify]

The graph maps a normalised float32 image batch (N, 3, H, W) to the decode
head's logits at (H, W), as ``EncoderDecoder.encode_decode`` does (no
auxiliary head). ``mmseg_aspp.ASPPHead`` exports mmseg's plain ASPP formula
with the same weights (see ``mmseg_aspp/atrous/reference.py``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from torch import Tensor, nn  # noqa: E402

# The TorchScript exporter (dynamo=False) is the default: with torch 2.13 it
# exports the demo model in under a second (the dynamo exporter takes several),
# gives dynamic batch/height/width through dynamic_axes, writes exactly the
# requested --opset (the dynamo exporter silently falls back to opset 18 when
# it cannot convert down, e.g. for opset 11 or 12) and needs no onnxscript.
# PyTorch deprecates it in favour of the dynamo exporter, which also exports
# this model exactly (--exporter dynamo, needs onnxscript) and is the way
# forward once the TorchScript one is removed.
EXPORTERS = ("torchscript", "dynamo")


class SegmentorLogits(nn.Module):
    """Normalised image (N, 3, H, W) -> decode-head logits resized to (H, W).

    Args:
        segmentor: An mmseg ``EncoderDecoder`` (``extract_feat`` + ``decode_head``).
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: Tensor) -> Tensor:
        head = self.segmentor.decode_head
        logits = head(self.segmentor.extract_feat(image))
        return F.interpolate(logits, size=image.shape[2:], mode="bilinear",
                             align_corners=head.align_corners)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Export a segmentor checkpoint to ONNX")
    parser.add_argument("config", help="config file path")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("--out", help="output .onnx file (default: next to the checkpoint)")
    parser.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"),
                        help="input height and width (default: the config's crop size, else 512 512)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch, height and width instead of a fixed 1x3xHxW input")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="torch.onnx exporter (default: torchscript)")
    parser.add_argument("--verify", action="store_true",
                        help="compare onnxruntime with PyTorch (two input sizes when --dynamic)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest accepted |ONNX - PyTorch| for --verify (default: 1e-3)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Exit with a message naming what is missing and how to get it.

    Args:
        args: Parsed command line.
    """
    for path, what in ((args.config, "config"), (args.checkpoint, "checkpoint")):
        if not osp.isfile(path):
            sys.exit(f"{what} not found: {path}")
    needed = ["onnx"] + (["onnxruntime"] if args.verify else [])
    needed += ["onnxscript"] if args.exporter == "dynamo" else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        install = ["onnx", "onnxruntime"] + (["onnxscript"] if "onnxscript" in missing else [])
        sys.exit(f"export_onnx.py needs {', '.join(missing)} (not installed); "
                 f"run: pip install {' '.join(install)}")
    if args.shape and min(args.shape) < 1:
        sys.exit(f"--shape needs positive H and W; got {args.shape}")


def build_segmentor(config: str, checkpoint: str, cfg_options: dict | None) -> tuple[nn.Module, Config]:
    """The config's model with the checkpoint's weights, on CPU, in eval mode.

    Args:
        config: Config file.
        checkpoint: ``.pth`` file; its ``state_dict`` entry if present, else the whole file.
        cfg_options: ``--cfg-options`` overrides, or None.

    Returns:
        The model and the loaded config.
    """
    from mmseg.registry import MODELS

    from mmseg_aspp.checkpoint import CheckpointError, check_state_dict_matches, load_checkpoint_file
    from mmseg_aspp.runtime import replace_sync_bn

    cfg = Config.fromfile(config)  # imports mmseg_aspp through custom_imports
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    cfg.model = replace_sync_bn(cfg.model)  # SyncBN cannot run on CPU; eval BN is the same
    cfg.model.pop("pretrained", None)  # the checkpoint replaces every weight
    model = MODELS.build(cfg.model)
    try:
        state = load_checkpoint_file(checkpoint)
        state = state.get("state_dict", state)
        check_state_dict_matches(model, state, checkpoint)
    except CheckpointError as err:
        sys.exit(f"error: {err}\nUse the config the checkpoint was trained with (and the same --cfg-options).")
    model.load_state_dict(state, strict=False)  # extra keys (e.g. an auxiliary head) are not exported
    return model.eval(), cfg


def default_shape(cfg: Config) -> tuple[int, int]:
    """The config's crop size (H, W), else 512x512."""
    size = cfg.model.get("data_preprocessor", {}).get("size") or cfg.get("crop_size")
    return tuple(size) if size else (512, 512)


def export(module: nn.Module, path: str, shape: tuple[int, int], dynamic: bool,
           opset: int | None, exporter: str) -> None:
    """Write ``module`` to ``path``; a fixed (1, 3, H, W) input unless ``dynamic``.

    Args:
        module: Maps an image batch to logits; must be in eval mode.
        path: Output ``.onnx`` file.
        shape: (H, W) of the example input.
        dynamic: Make batch, height and width dynamic.
        opset: ONNX opset version, or None for the exporter's default.
        exporter: ``"torchscript"`` or ``"dynamo"``.
    """
    example = torch.randn(2 if dynamic else 1, 3, *shape)
    names = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
    with torch.no_grad(), warnings.catch_warnings():
        # The head checks its input's channel count, a static dimension.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                module=r"mmseg_aspp\.models\.aspp_head")
        if exporter == "torchscript":
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            axes = {0: "batch", 2: "height", 3: "width"}
            dynamic_axes = {"image": axes, "logits": axes} if dynamic else None
            torch.onnx.export(module, (example,), path, dynamo=False, dynamic_axes=dynamic_axes, **names)
            if dynamic:
                _set_class_dim(path, module.segmentor.decode_head.out_channels)
        else:
            dim = torch.export.Dim
            dims = {0: dim("batch"), 2: dim("height"), 3: dim("width")}
            dynamic_shapes = {"image": dims} if dynamic else None
            torch.onnx.export(module, (example,), path, dynamo=True, dynamic_shapes=dynamic_shapes,
                              external_data=False, verbose=False, **names)


def _set_class_dim(path: str, num_classes: int) -> None:
    """Declare the logits' class dimension, which the TorchScript exporter leaves
    symbolic behind a Resize to a run-time size."""
    import onnx

    model = onnx.load(path)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = num_classes
    onnx.save(model, path)


def verify(path: str, module: nn.Module, shapes: list[tuple[int, ...]]) -> list[float]:
    """Max |onnxruntime - PyTorch| of the logits for random inputs of each shape.

    Args:
        path: The exported ``.onnx`` file.
        module: The exported module, run eagerly as the reference.
        shapes: Input shapes (N, 3, H, W) to compare at.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs = []
    for shape in shapes:
        image = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            expected = module(image)
        (actual,) = session.run(["logits"], {"image": image.numpy()})
        if actual.shape != tuple(expected.shape):
            sys.exit(f"ONNX output shape {actual.shape} != PyTorch {tuple(expected.shape)} for input {shape}")
        diffs.append(float((torch.from_numpy(actual) - expected).abs().max()))
    return diffs


def verify_shapes(shape: tuple[int, int], dynamic: bool) -> list[tuple[int, ...]]:
    """The exported shape and, for a dynamic graph, a second batch and size.

    Args:
        shape: Exported (H, W).
        dynamic: Whether the graph has dynamic axes.
    """
    height, width = shape
    shapes = [(1, 3, height, width)]
    if dynamic:  # odd sizes exercise the strided layers' rounding
        shapes.append((2, 3, max(height * 3 // 4, 8) | 1, max(width * 5 // 8, 8) | 1))
    return shapes


def main(argv=None) -> None:
    args = parse_args(argv)
    check_inputs(args)
    import onnx

    print(f"building {args.config} with weights from {args.checkpoint}")
    segmentor, cfg = build_segmentor(args.config, args.checkpoint, args.cfg_options)
    module = SegmentorLogits(segmentor).eval()
    shape = tuple(args.shape) if args.shape else default_shape(cfg)
    out = args.out or osp.splitext(args.checkpoint)[0] + ".onnx"
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    kind = "dynamic batch/height/width" if args.dynamic else f"static 1x3x{shape[0]}x{shape[1]}"
    print(f"exporting ({kind}, {args.exporter} exporter, example input {shape[0]}x{shape[1]})")
    export(module, out, shape, args.dynamic, args.opset, args.exporter)
    model = onnx.load(out)
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if args.opset is not None and opset != args.opset:
        os.remove(out)
        sys.exit(f"the {args.exporter} exporter wrote opset {opset} instead of the requested "
                 f"{args.opset} (file removed); try --exporter torchscript or another --opset")
    print(f"wrote {osp.abspath(out)} ({osp.getsize(out) / 2**20:.1f} MiB, opset {opset})")
    if args.verify:
        shapes = verify_shapes(shape, args.dynamic)
        diffs = verify(out, module, shapes)
        for s, diff in zip(shapes, diffs):
            print(f"verify: input {'x'.join(map(str, s))}: max |onnxruntime - pytorch| = {diff:.3g}")
        if max(diffs) > args.atol:
            sys.exit(f"verification failed: difference {max(diffs):.3g} exceeds --atol {args.atol:g}")
        print("verify: ok")


if __name__ == "__main__":
    main()
