"""Child registries: ``type='mmseg_aspp.X'`` builds ours, unprefixed names stay mmseg's."""
from mmengine.registry import Registry
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS

MODELS = Registry(
    "model",
    parent=MMSEG_MODELS,
    scope="mmseg_aspp",
    locations=["mmseg_aspp.models"],
)
TRANSFORMS = Registry(
    "transform",
    parent=MMSEG_TRANSFORMS,
    scope="mmseg_aspp",
    locations=["mmseg_aspp.data"],
)
