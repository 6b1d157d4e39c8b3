"""Whole-model rows of tools/benchmark.py: the R101-D8 recipes the ways a user could run them.

Upstream is mmseg's recipe (its own decode head and plain convolutions), ours the same recipe
with our head and conv layer, on the same weights and inputs. The peers:

* inference at 512x1024, batch 1: upstream eager (NCHW, as mmseg runs it), upstream with
  ``channels_last`` weights and input, upstream under ``torch.compile``, upstream exported to
  ONNX (opset 17) and run by ONNX Runtime's CPU provider and by OpenVINO (f32), ours eager and
  ours under ``torch.compile``; the same for the backbone alone;
* a training step at 512x512 (CPU) or 512x1024 (GPU), batch 2: the torch peers.

Every runtime gets the same thread count as torch. A runtime that is not installed, or fails,
is reported and left out; it never stops the run.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CPU_CASES = [("512x1024 b1", "eval", 1, (512, 1024)), ("512x512 b2", "train", 2, (512, 512))]
GPU_CASES = [("512x1024 b1", "eval", 1, (512, 1024)), ("512x1024 b2", "train", 2, (512, 1024))]
EVAL_PEERS = ("upstream", "upstream channels_last", "upstream compiled", "upstream onnxruntime",
              "upstream openvino", "ours", "ours compiled")
TRAIN_PEERS = ("upstream", "upstream channels_last", "upstream compiled", "ours", "ours compiled")
RUNTIMES = ("onnxruntime", "openvino")


class Logits(nn.Module):
    """Image -> decode-head logits at output stride 8 (``EncoderDecoder``'s tensor mode)."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: Tensor) -> Tensor:
        return self.segmentor.decode_head(self.segmentor.backbone(image))


class Backbone(nn.Module):
    """Image -> the backbone's last feature map (all four stages run to make it)."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.backbone = segmentor.backbone

    def forward(self, image: Tensor) -> Tensor:
        return self.backbone(image)[-1]


class TrainingLoss(nn.Module):
    """The recipes' training loss from tensors alone: cross-entropy of the decode head (weight 1)
    and the auxiliary FCN head (0.4) at label size, ignoring 255, as mmseg's ``loss`` computes it,
    so that every torch peer (compiled ones too) runs the same step."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: Tensor, labels: Tensor) -> Tensor:
        features = self.segmentor.backbone(image)
        loss = 0.0
        for head, weight in ((self.segmentor.decode_head, 1.0), (self.segmentor.auxiliary_head, 0.4)):
            logits = F.interpolate(head(features), size=labels.shape[1:], mode="bilinear", align_corners=False)
            loss = loss + weight * F.cross_entropy(logits, labels, ignore_index=255)
        return loss


def build_pair(folder: str, config: str, device, plan: str, upstream_folder: str | None = None) -> dict[str, nn.Module]:
    """Upstream's and our segmentor of one recipe, on ``device``, with upstream's weights in both.

    Args:
        folder, config: Our recipe, ``configs/<folder>/<config>``.
        upstream_folder: Its twin's folder (default ``<folder>_upstream``).
    """
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
    models = {}
    for name, which in (("upstream", upstream_folder or f"{folder}_upstream"), ("ours", folder)):
        cfg = Config.fromfile(os.path.join(root, which, config))
        cfg.model.pretrained = None
        models[name] = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device)
    models["ours"].load_state_dict(models["upstream"].state_dict(), strict=True)
    models["ours"].decode_head.plan = plan
    return models


@dataclass
class Peer:
    """One way to run a case: ``step`` is what is timed, ``outputs`` what its result is checked by."""

    name: str
    step: Callable[[], object]
    outputs: Callable[[], Tensor] | None = None
    torch_memory: bool = True  # its allocations are torch's (the profiler sees them)


def runtime_session(runtime: str, onnx_path: str, threads: int):
    """A callable ``image (numpy) -> first output (numpy)`` of ``onnx_path`` in ``runtime``."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda image: session.run(None, {name: image})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
    return lambda image: compiled(image)[0]


def _export(module: nn.Module, image: Tensor, path: str) -> None:
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (image,), path, opset_version=17, dynamo=False, input_names=["image"])
    module.eval()  # the exporter sets every child back to the wrapper's training flag


def eval_peers(models: dict, image: Tensor, part: str, device, notes: list[str], work_dir: str) -> list[Peer]:
    """The inference peers of ``part`` ("model" or "backbone")."""
    wrap = Logits if part == "model" else Backbone
    modules = {name: wrap(model).eval() for name, model in models.items()}

    def torch_peer(name, module, x):
        def step():
            with torch.no_grad():
                return module(x)

        return Peer(name, step, lambda: step().float())

    peers = [torch_peer("upstream", modules["upstream"], image)]
    if device.type == "cpu":
        upstream_cl = wrap(_channels_last_copy(models["upstream"])).eval()
        peers.append(torch_peer("upstream channels_last", upstream_cl, image.contiguous(memory_format=torch.channels_last)))
    for name in ("upstream", "ours"):
        compiled = _compiled(modules[name], notes, f"{name} {part}")
        if compiled is not None:
            peers.append(torch_peer(f"{name} compiled", compiled, image))
    if device.type == "cpu":
        path = os.path.join(work_dir, f"upstream_{part}.onnx")
        _export(modules["upstream"], image.cpu(), path)
        for runtime in RUNTIMES:
            try:
                run = runtime_session(runtime, path, torch.get_num_threads())
            except Exception as err:  # noqa: BLE001 - a missing or failing runtime only drops its row
                notes.append(f"{runtime}: not run ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                continue
            array = image.cpu().numpy()
            peers.append(Peer(f"upstream {runtime}", lambda run=run: run(array),
                              lambda run=run: torch.from_numpy(run(array)), torch_memory=False))
    peers.append(torch_peer("ours", modules["ours"], image))
    return peers


def train_peers(models: dict, image: Tensor, labels: Tensor, device, notes: list[str]) -> list[Peer]:
    """The training-step peers: forward, the recipe's loss and backward."""

    def peer(name, module, x):
        module.train()
        parameters = list(module.parameters())

        def step():
            for p in parameters:
                p.grad = None
            module(x, labels).backward()

        return Peer(name, step)

    losses = {name: TrainingLoss(model) for name, model in models.items()}
    peers = [peer("upstream", losses["upstream"], image)]
    if device.type == "cpu":
        peers.append(peer("upstream channels_last", TrainingLoss(_channels_last_copy(models["upstream"])),
                          image.contiguous(memory_format=torch.channels_last)))
    for name in ("upstream", "ours"):
        compiled = _compiled(losses[name], notes, f"{name} training step")
        if compiled is not None:
            peers.append(peer(f"{name} compiled", compiled, image))
    peers.append(peer("ours", losses["ours"], image))
    return peers


def _channels_last_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _compiled(module: nn.Module, notes: list[str], what: str):
    try:
        return torch.compile(module)
    except Exception as err:  # noqa: BLE001
        notes.append(f"torch.compile of {what}: not run ({type(err).__name__})")
        return None


def compare(row, peer: Peer, reference: Tensor, part: str) -> None:
    """Argmax agreement of a logits peer with upstream eager, and the relative L2 distance of its
    output (logits, or the backbone's last map) from upstream eager's."""
    out = peer.outputs().float().to(reference.device)
    row.relative_error = ((out - reference).norm() / reference.norm()).item()
    if part == "model":
        row.argmax_agreement = (out.argmax(1) == reference.argmax(1)).float().mean().item()


def work(mode: str, batch: int, height: int, width: int, part: str = "model") -> float:
    """Rough FLOPs of one step, for the progress estimate: R101-D8 at output stride 8 runs about
    2.7 GFLOP per 1000 input pixels in its backbone and as much in its head; training about 3x."""
    flops = 2.7e9 * batch * height * width / 1000 * (2 if part == "model" else 1)
    return flops * (1 if mode == "eval" else 3)


def planned_work(device, repeats: int) -> float:
    """``work`` of every peer and case of one recipe."""
    total = 0.0
    for _, mode, batch, (height, width) in (GPU_CASES if device.type == "cuda" else CPU_CASES):
        peers = len(EVAL_PEERS if mode == "eval" else TRAIN_PEERS)
        total += work(mode, batch, height, width) * peers * (repeats + 2)
        if mode == "eval":
            total += work(mode, batch, height, width, "backbone") * peers * (repeats + 2)
    return total


def run_model_peers(args, family, device, rows, progress, measure, make_row) -> tuple[list[str], int]:
    """Time every peer of ``family``'s recipe; append one row per peer and case to ``rows``.

    Returns:
        Notes on peers that could not run, and the bytes of prepared weights ours keeps.
    """
    from mmseg_aspp.atrous.weights import prepared_bytes

    notes: list[str] = []
    folder, config = family.model_config
    models = build_pair(folder, config, device, args.plan)
    label = "R101-D8 V3+" if family.decoder else "R101-D8"
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    with tempfile.TemporaryDirectory() as work_dir:
        for case, mode, batch, (height, width) in cases:
            gen = torch.Generator().manual_seed(0)
            image = torch.randn(batch, 3, height, width, generator=gen).to(device)
            parts = ("model", "backbone") if mode == "eval" else ("model",)
            for part in parts:
                title = f"{label} {case}" if part == "model" else f"{label} backbone {case}"
                if mode == "eval":
                    peers = eval_peers(models, image, part, device, notes, work_dir)
                else:
                    labels = torch.randint(0, 19, (batch, height, width), generator=gen).to(device)
                    peers = train_peers(models, image, labels, device, notes)
                progress.step(f"{title} {mode}: {', '.join(p.name for p in peers)}",
                              work(mode, batch, height, width, part) * len(peers) * (args.repeats + 2))
                started = time.perf_counter()
                if mode == "eval":
                    # Our first inference call learns which BatchNorm follows each convolution and
                    # the second folds them: measure() warms every peer up once, so ours gets its
                    # learning call here and steady state (folded, buffers in place) is measured.
                    next(p for p in peers if p.name == "ours").step()
                results = measure({p.name: p.step for p in peers}, device, args.repeats,
                                  memory={p.name for p in peers if p.torch_memory})
                reference = peers[0].outputs() if mode == "eval" else None
                base = statistics.median(results["upstream"][0])
                for peer in peers:
                    times, peak_mb = results[peer.name]
                    row = make_row(title, mode, peer.name, times, peak_mb)
                    row.ratio = base / row.median_ms
                    if reference is not None and peer.outputs is not None:
                        compare(row, peer, reference, part)
                    rows.append(row)
                print(f"  {title} {mode}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return notes, prepared_bytes()  # while our models (the cache's keys) are alive
