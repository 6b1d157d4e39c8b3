"""Property-based: any batch, map size, rate set and width either matches upstream (in
float64, to its rounding) or raises one of our clear errors, never an exception from inside torch."""
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mmseg.registry import MODELS

from helpers import head_cfg, randomize_
from mmseg_aspp.errors import MmsegAsppError

# Invalid rate sets are covered by test_errors.py; here every branch geometry.
rate_sets = st.lists(st.integers(1, 100), min_size=1, max_size=5)
TOLERANCE = 1e-10  # float64; a wrong tap or a wrong crop moves values by whole percents


def _build(impl, rates, in_channels, channels):
    # No dropout: train-mode outputs are then deterministic and comparable.
    return MODELS.build(head_cfg(impl, dilations=rates, in_channels=in_channels, channels=channels,
                                 num_classes=3, dropout_ratio=0))


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 3), height=st.integers(1, 80), width=st.integers(1, 80), rates=rate_sets,
       in_channels=st.integers(1, 12), channels=st.integers(1, 8), extra_channels=st.sampled_from([0, 0, 0, 1]),
       train=st.booleans())
def test_head_matches_upstream_or_raises_our_error(batch, height, width, rates, in_channels, channels,
                                                   extra_channels, train):
    torch.manual_seed(0)  # an example's data must not depend on what ran before it
    ours = _build("ours", rates, in_channels, channels)
    upstream = _build("upstream", rates, in_channels, channels)
    randomize_(upstream)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    ours.double().train(train)
    upstream.double().train(train)

    x = torch.randn(batch, in_channels + extra_channels, height, width, dtype=torch.float64, requires_grad=train)
    try:
        out = ours([x])
    except MmsegAsppError as err:
        # Only for inputs upstream cannot handle either.
        batch_of_one = train and (batch == 1 or batch * height * width == 1)
        assert extra_channels or batch_of_one, err
        with pytest.raises((RuntimeError, ValueError)):
            upstream([x])
        event(f"refused: {type(err).__name__}")
        return
    assert not extra_channels, "a channel mismatch must be reported"
    expected = upstream([x])
    event(f"compared ({'train' if train else 'eval'})")
    torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=TOLERANCE)
    if train:
        seed = torch.randn_like(out)
        (grad_ours,) = torch.autograd.grad((out * seed).sum(), x)
        (grad_upstream,) = torch.autograd.grad((expected * seed).sum(), x)
        torch.testing.assert_close(grad_ours, grad_upstream, atol=TOLERANCE, rtol=TOLERANCE)
        for name, buffer in upstream.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], buffer, atol=TOLERANCE, rtol=TOLERANCE)  # BN statistics
