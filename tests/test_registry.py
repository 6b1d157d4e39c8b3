import subprocess
import sys
import textwrap

from mmseg.models.decode_heads import ASPPHead as MMSegASPPHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS as MMSEG_MODELS

import mmseg_aspp
from helpers import head_cfg
from mmseg_aspp.registry import MODELS


def test_prefixed_type_builds_ours_and_plain_type_stays_mmseg():
    ours = MMSEG_MODELS.build(head_cfg("ours"))
    upstream = MMSEG_MODELS.build(head_cfg("upstream"))
    assert type(ours) is mmseg_aspp.ASPPHead
    assert type(upstream) is MMSegASPPHead
    assert isinstance(ours, BaseDecodeHead)


def test_child_registry_is_scoped_under_mmseg():
    assert MODELS.scope == "mmseg_aspp"
    assert MODELS.parent is MMSEG_MODELS
    assert MODELS.get("ASPPHead") is mmseg_aspp.ASPPHead
    assert MMSEG_MODELS.get("ASPPHead") is MMSegASPPHead


def test_state_dict_keys_and_shapes_equal_upstream():
    for dilations in [(1, 6, 12, 18), (1, 12, 24, 36), (3,), (2, 1, 5)]:
        ours = MMSEG_MODELS.build(head_cfg("ours", dilations=dilations))
        upstream = MMSEG_MODELS.build(head_cfg("upstream", dilations=dilations))
        ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        upstream_shapes = {k: tuple(v.shape) for k, v in upstream.state_dict().items()}
        assert ours_shapes == upstream_shapes


def test_import_without_mmseg_names_what_to_install():
    # Hide mmseg from a fresh interpreter and check the message is actionable.
    code = textwrap.dedent(
        """
        import sys
        sys.modules['mmseg'] = None
        try:
            import mmseg_aspp
        except ImportError as err:
            print(err)
        else:
            print('IMPORTED')
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "could not import 'mmseg'" in out.stdout
    assert "mmseg-aspp[onedl]" in out.stdout and "mmseg-aspp[openmmlab]" in out.stdout
