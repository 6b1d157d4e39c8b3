import pytest
import torch
from mmseg.registry import MODELS

from helpers import head_cfg


@pytest.mark.parametrize(
    "dilations, fragment",
    [
        ((), "non-empty list or tuple"),
        ([], "non-empty list or tuple"),
        (12, "non-empty list or tuple"),
        ("1,6", "non-empty list or tuple"),
        ((1, 0, 12), "invalid value(s) [0]"),
        ((1, -6), "invalid value(s) [-6]"),
        ((1, 6.0), "invalid value(s) [6.0]"),
        ((1, True), "invalid value(s) [True]"),
    ],
)
def test_bad_dilations_are_rejected(dilations, fragment):
    with pytest.raises(ValueError, match="dilations") as err:
        MODELS.build(head_cfg("ours", dilations=dilations))
    assert fragment in str(err.value)


@pytest.mark.parametrize("name, value", [("channels", 0), ("channels", -4), ("in_channels", 0),
                                         ("in_channels", 2.5), ("in_channels", [8, 0])])
def test_non_positive_channels_are_rejected(name, value):
    overrides = {name: value}
    if isinstance(value, list):
        overrides.update(in_index=[0, 1], input_transform="resize_concat")
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        MODELS.build(head_cfg("ours", **overrides))


def test_wrong_input_channels_names_expected_and_got():
    head = MODELS.build(head_cfg("ours", in_channels=16)).eval()
    with pytest.raises(ValueError, match=r"in_channels=16 but got a feature map with 12 channels"):
        head([torch.randn(1, 12, 9, 9)])


def test_non_4d_input_is_rejected():
    head = MODELS.build(head_cfg("ours")).eval()
    with pytest.raises(ValueError, match=r"4-D feature map .* got shape \(16, 9, 9\)"):
        head([torch.randn(16, 9, 9)])


def test_unsupported_conv_cfg_is_rejected():
    with pytest.raises(ValueError, match="conv_cfg"):
        MODELS.build(head_cfg("ours", conv_cfg=dict(type="Conv3d")))


@pytest.mark.parametrize("impl", ["ours", "upstream"])
def test_bad_dilations_are_an_assertion_error_as_in_mmseg(impl):
    # mmseg's own head test expects AssertionError for dilations=1; code catching it keeps working.
    with pytest.raises(AssertionError) as err:
        MODELS.build(head_cfg(impl, dilations=1))
    if impl == "ours":
        assert "dilations must be a non-empty list or tuple" in str(err.value)
