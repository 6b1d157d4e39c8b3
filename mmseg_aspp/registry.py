"""Child registry: ``type='mmseg_aspp.X'`` builds ours, unprefixed names stay mmseg's."""
from mmengine.registry import Registry
from mmseg.registry import MODELS as MMSEG_MODELS

MODELS = Registry(
    "model",
    parent=MMSEG_MODELS,
    scope="mmseg_aspp",
    locations=["mmseg_aspp.models"],
)
