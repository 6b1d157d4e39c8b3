import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mmseg.utils import register_all_modules  # noqa: E402

# Nested builds (data preprocessor, backbone) resolve names in mmseg's scope,
# as they do in a config run by mmengine's Runner.
register_all_modules(init_default_scope=True)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from tooling import make_data_root

    return make_data_root(tmp_path_factory)
