import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from mmseg.utils import register_all_modules  # noqa: E402

# Nested builds (data preprocessor, backbone) resolve names in mmseg's scope,
# as they do in a config run by mmengine's Runner.
register_all_modules(init_default_scope=True)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def planned_as_wide(monkeypatch):
    """Narrow test heads planned as the real 2048 -> 512 head is: only Winograd's width rule
    looks at channel counts, and it is lifted."""
    from mmseg_aspp.atrous import planner

    monkeypatch.setattr(planner, "WINOGRAD_MIN_WIDTH", 0)
    monkeypatch.setattr(planner, "WINOGRAD_TRAIN_MIN_WIDTH", 0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from tooling import make_data_root

    return make_data_root(tmp_path_factory)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory, data_root):
    """The demo config trained by our tools/train.py for 4 iterations (checkpoints at 2 and 4).

    Shared read-only: tests that continue the run copy ``work_dir`` first.
    """
    from tooling import DEMO_CS, TOOLS, run_tool, small_config

    tmp = tmp_path_factory.mktemp("trained_demo")
    config = small_config(tmp, DEMO_CS, data_root, iters=4)
    log = run_tool(os.path.join(TOOLS, "train.py"), config, "--work-dir", str(tmp / "work"))
    return SimpleNamespace(config=config, work_dir=tmp / "work", log=log)
