import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from mmseg.utils import register_all_modules  # noqa: E402

# Nested builds (data preprocessor, backbone) resolve names in mmseg's scope,
# as they do in a config run by mmengine's Runner.
register_all_modules(init_default_scope=True)
