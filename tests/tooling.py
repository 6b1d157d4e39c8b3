"""Running the shipped tools (as subprocesses or imported modules) on small synthetic data."""
import importlib.util
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
DEMO_CS = os.path.join(ROOT, "configs", "demo", "deeplabv3_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py")
DEMO_CS_PLUS = os.path.join(ROOT, "configs", "demo", "deeplabv3plus_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py")
DEMO_VOC = os.path.join(ROOT, "configs", "demo", "deeplabv3_r18-d8_1xb4-600it_synthetic-voc-128x128.py")
TWIN_CS = os.path.join(ROOT, "configs", "deeplabv3_upstream", os.path.basename(DEMO_CS))
# mmseg ships its own tools/train.py and tools/test.py inside the package.
MMSEG_TOOLS = os.path.join(os.path.dirname(importlib.util.find_spec("mmseg").origin), ".mim", "tools")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    env["PYTHON"] = sys.executable  # the launcher scripts run ${PYTHON:-python}
    return env


def run_tool(*args, timeout=600, env=None, check=True):
    """Run a tool script; returns its output, or with ``check=False`` the CompletedProcess."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") else ["bash", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if not check:
        return proc
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


def make_data_root(tmp_path_factory):
    """Synthetic Cityscapes and VOC layouts, 4 train and 2 val images each."""
    root = tmp_path_factory.mktemp("data")
    writer = load_tool("make_synthetic_data")
    for layout in ("cityscapes", "voc"):
        writer.main([layout, str(root / layout), "--train", "4", "--val", "2"])
    return root


def small_config(tmp_path, base, data_root, iters=4, extra=""):
    """A config inheriting ``base`` with tiny data, few iterations, no workers."""
    if "voc" in os.path.basename(base):
        voc = f"{data_root}/voc/VOCdevkit/VOC2012"
        parts = [("SegmentationClass", "train"), ("SegmentationClassAug", "aug")]
        train_ds = "dict(datasets=[" + ", ".join(
            f"dict(type='PascalVOCDataset', data_root='{voc}', ann_file='ImageSets/Segmentation/{split}.txt', "
            f"data_prefix=dict(img_path='JPEGImages', seg_map_path='{labels}'), "
            "pipeline={{_base_.train_pipeline}})" for labels, split in parts) + "])"
        val_root = voc
    else:
        train_ds = f"dict(data_root='{data_root}/cityscapes/')"
        val_root = f"{data_root}/cityscapes/"
    text = f"""
_base_ = '{base}'
custom_imports = dict(imports=['mmseg_aspp', 'rank_marker'], allow_failed_imports=False)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset={train_ds})
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{val_root}'))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=100, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=5), logger=dict(interval=1))
custom_hooks = [dict(type='mmseg_aspp.CheckpointGuardHook'), dict(type='mmseg_aspp.DataCheckHook'),
                dict(type='RankMarkerHook')]
{extra}
"""
    path = tmp_path / f"small_{os.path.basename(base)}"
    path.write_text(text)
    return str(path)



def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_tool(name):
    """Import ``tools/<name>.py`` as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
