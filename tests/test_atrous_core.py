"""The atrous core on its own: geometry rules, the tap-skipping and Winograd convolutions."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from float_error import perturbed_at_fp32_rounding, relative_error
from mmseg_aspp.atrous import effective_kernel, valid_tap_fraction
from mmseg_aspp.atrous.kernels.tap_skipping import atrous_convs
from mmseg_aspp.atrous.geometry import phase_groups, tap_span
from mmseg_aspp.atrous.kernels import winograd
from mmseg_aspp.atrous.kernels.winograd import F2, F4, winograd_conv3x3, winograd_input, winograd_kernel

pytestmark = pytest.mark.stack_independent  # pure torch: the core's convolutions


@pytest.mark.parametrize("length", [1, 5, 16, 65])
@pytest.mark.parametrize("rate", [1, 3, 6, 12, 24, 36, 100])
def test_valid_tap_fraction_counts_taps(length, rate):
    inside = sum(0 <= pos + off < length for pos in range(length) for off in (-rate, 0, rate))
    assert valid_tap_fraction(length, rate) == pytest.approx(inside / (3 * length))


@pytest.mark.parametrize("height, width, rate", [(8, 8, 12), (8, 40, 12), (40, 8, 12), (30, 30, 6)])
def test_effective_kernel_is_exact(height, width, rate):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, height, width, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64)
    rows, cols, padding = effective_kernel(height, width, rate)
    full = F.conv2d(x, w, padding=rate, dilation=rate)
    cropped = F.conv2d(x, w[:, :, rows, cols], padding=padding, dilation=rate)
    torch.testing.assert_close(cropped, full, rtol=0, atol=1e-12)


def test_tap_span():
    assert tap_span(10, 3) == (0, 7)
    assert tap_span(10, -3) == (3, 10)
    assert tap_span(10, 0) == (0, 10)
    assert tap_span(4, 6)[0] >= tap_span(4, 6)[1]  # empty


# The last case: outer taps reach a single row/column, input in channels-last layout.
@pytest.mark.parametrize("shape, rate, kernel, layout", [
    ((2, 3, 9, 11), 4, (3, 3), torch.contiguous_format),
    ((1, 2, 5, 13), 6, (1, 3), torch.contiguous_format),
    ((2, 3, 7, 5), 4, (3, 3), torch.channels_last),
])
def test_atrous_convs_gradcheck(shape, rate, kernel, layout):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_()
    weights = [torch.randn(4, shape[1], *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(2)]
    padding = tuple(rate if k == 3 else 0 for k in kernel)
    geometry = [(padding, rate), (padding, rate)]
    assert torch.autograd.gradcheck(lambda x, *w: atrous_convs(x, w, geometry), (x, *weights), fast_mode=True)


def test_atrous_convs_match_conv2d_forward_and_backward():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 17, 23, generator=gen, requires_grad=True)
    w = torch.randn(6, 8, 3, 3, generator=gen, requires_grad=True)
    (ours,) = atrous_convs(x, [w], [((5, 5), 5)])
    ref = F.conv2d(x, w, padding=5, dilation=5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    grad = torch.randn(ref.shape, generator=gen)
    gx, gw = torch.autograd.grad(ours, (x, w), grad)
    rx, rw = torch.autograd.grad(ref, (x, w), grad)
    torch.testing.assert_close(gx, rx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-5)


def _winograd(x, kernel, transform=F2, max_tiles=None):
    buffer, interior = winograd_input(x.shape[0], x.shape[1], x.shape[2], x.shape[3], like=x, transform=transform)
    interior.copy_(x)
    return winograd_conv3x3(buffer, kernel, x.shape[2], x.shape[3], transform, max_tiles)


TRANSFORMS = pytest.mark.parametrize("transform", [F2, F4], ids=["F2x2", "F4x4"])


@TRANSFORMS
def test_toom_cook_transforms_compute_a_3_tap_correlation(transform):
    """A^T [(G g) * (B^T d)] equals the m outputs of correlating d with g, for every d and g."""
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(transform.n, 50, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    input_t, kernel_t, output_t = (torch.tensor(t, dtype=torch.float64) for t in transform[1:])
    ours = output_t @ ((kernel_t @ g) * (input_t @ d))
    expected = torch.stack([sum(d[i + k] * g[k] for k in range(3)) for i in range(transform.m)])
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)


# Odd and even sizes, single rows/columns, a 1x1 map, batches of 1 to 3; in one piece
# (None), tile by tile, in bands of tile rows (3 and 7 tiles), and several images at once.
@TRANSFORMS
@pytest.mark.parametrize("max_tiles", [None, 1, 3, 7, 40])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (3, 6, 1), (1, 2, 2), (2, 9, 14), (1, 17, 33), (3, 5, 5)])
def test_winograd_conv3x3_equals_conv2d(shape, max_tiles, transform):
    gen = torch.Generator().manual_seed(3)
    batch, height, width = shape
    x = torch.randn(batch, 8, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 8, 3, 3, generator=gen, dtype=torch.float64)
    ours = _winograd(x, winograd_kernel(weight, transform), transform, max_tiles)
    ref = F.conv2d(x, weight, padding=1)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("length", [1, 5, 12, 13, 64, 97])
@pytest.mark.parametrize("rate", [1, 2, 12, 24, 100])
def test_phase_groups_partition_the_axis(length, rate):
    positions = []
    for first, end, count in phase_groups(length, rate):
        positions += [p + rate * i for p in range(first, end) for i in range(count)]
    assert sorted(positions) == list(range(length))


# Rates that divide the map and that leave phases of two sizes on one or both axes, a batch
# of two; passes of all row phases at once (default), of some (2000 bytes) and of one row
# phase and one tile at a time (1 byte).
@TRANSFORMS
@pytest.mark.parametrize("chunk_bytes", [None, 2000, 1])
@pytest.mark.parametrize("shape, rate", [((1, 12, 12), 3), ((2, 13, 29), 3), ((1, 7, 5), 4),
                                         ((2, 9, 20), 12), ((1, 25, 18), 6), ((1, 6, 6), 1)])
def test_winograd_atrous_conv3x3_equals_dilated_conv2d(shape, rate, chunk_bytes, transform, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(winograd, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(5)
    batch, height, width = shape
    x = torch.randn(batch, 6, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, generator=gen, dtype=torch.float64)
    ours = winograd.winograd_atrous_conv3x3(x.permute(0, 2, 3, 1), winograd_kernel(weight, transform), rate, transform)
    ref = F.conv2d(x, weight, padding=rate, dilation=rate)
    torch.testing.assert_close(ours.permute(0, 3, 1, 2), ref, atol=1e-12, rtol=0)


def test_winograd_conv3x3_bf16_error_is_close_to_direct_bf16():
    """Winograd's extra roundings in bf16 stay within a small factor of a direct bf16 conv's."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 64, 20, 30, generator=gen).relu()
    weight = torch.randn(32, 64, 3, 3, generator=gen) * 0.05
    ref = F.conv2d(x, weight, padding=1)
    direct = F.conv2d(x.bfloat16(), weight.bfloat16(), padding=1).float()
    ours = _winograd(x.bfloat16(), winograd_kernel(weight).bfloat16()).float()
    direct_error = (direct - ref).abs().max().item()
    assert (ours - ref).abs().max().item() <= 4 * direct_error  # 2.6x here


def test_winograd_4x4_fp32_error_stays_within_a_few_direct_convolutions():
    """F(4x4, 3x3)'s larger transform coefficients round more than F(2x2, 3x3); the chosen
    interpolation points keep it near a direct fp32 convolution. The yardstick is how far the
    float64 result moves under a 2**-24 perturbation of input and weight (8.7e-8 here), which no
    CPU's summation order changes: oneDNN's direct convolution lands 2x (AVX-512) to 7x (AVX2)
    that far off, F(2x2, 3x3) 5x, F(4x4, 3x3) 20x."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 256, 24, 32, generator=gen).relu()
    weight = torch.randn(32, 256, 3, 3, generator=gen) * 0.05
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    _, (x_jittered, weight_jittered) = perturbed_at_fp32_rounding(nn.Identity(), [x.double(), weight.double()])
    conditioning = relative_error(F.conv2d(x_jittered, weight_jittered, padding=1), ref)
    ratio = relative_error(_winograd(x, winograd_kernel(weight, F4), F4), ref) / conditioning
    assert ratio <= 40, ratio


# Forward, input gradient and Winograd weight gradient against conv2d in float64: plain and
# dilated, phases of two sizes, odd maps, passes of one tile (1 byte) and of several maps.
@pytest.mark.parametrize("chunk_bytes", [None, 1, 2000])
@pytest.mark.parametrize("shape, rate", [((2, 3, 9, 11), 1), ((1, 4, 7, 5), 2), ((2, 3, 13, 29), 3),
                                         ((1, 2, 12, 12), 6), ((2, 3, 5, 5), 1)])
def test_trainable_winograd_matches_conv2d_and_its_gradients(shape, rate, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(winograd, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, shape[1], 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape[0], 4, *shape[2:], generator=gen, dtype=torch.float64)
    ours = winograd.winograd_atrous_conv3x3_trainable(x, weight, rate)
    ref = F.conv2d(x, weight, padding=rate, dilation=rate)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    for got, expected in zip(torch.autograd.grad(ours, (x, weight), grad), torch.autograd.grad(ref, (x, weight), grad)):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@TRANSFORMS
@pytest.mark.parametrize("shape, rate", [((2, 3, 9, 11), 1), ((1, 4, 7, 5), 2), ((2, 3, 13, 29), 3),
                                         ((1, 2, 12, 12), 6), ((1, 3, 4, 30), 12)])
def test_whole_tensor_winograd_matches_dilated_conv2d(shape, rate, transform):
    """The form torch.compile traces: phases by padding and reshaping, tiles by slicing."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, shape[1], 3, 3, generator=gen, dtype=torch.float64)
    ours = winograd.winograd_atrous_conv3x3_graph(x, winograd_kernel(weight, transform), rate, transform)
    torch.testing.assert_close(ours, F.conv2d(x, weight, padding=rate, dilation=rate), atol=1e-12, rtol=0)
