import os
import random
import sys

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


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from tooling import make_data_root

    return make_data_root(tmp_path_factory)
