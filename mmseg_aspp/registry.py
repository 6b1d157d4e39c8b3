"""Child registries: ``type='mmseg_aspp.X'`` builds ours, unprefixed names stay mmseg's."""
from mmengine.registry import Registry
from mmseg.registry import HOOKS as MMSEG_HOOKS
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import RUNNERS as MMSEG_RUNNERS

MODELS = Registry("model", parent=MMSEG_MODELS, scope="mmseg_aspp", locations=["mmseg_aspp.models"])
# runner_type='mmseg_aspp.ReliableRunner' and custom_hooks of our configs.
RUNNERS = Registry("runner", parent=MMSEG_RUNNERS, scope="mmseg_aspp", locations=["mmseg_aspp.runner"])
HOOKS = Registry("hook", parent=MMSEG_HOOKS, scope="mmseg_aspp", locations=["mmseg_aspp.runner"])
