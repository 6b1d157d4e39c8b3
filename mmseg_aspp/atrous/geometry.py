"""Which taps of a dilated 3x3 kernel can read the feature map at all."""
from __future__ import annotations


def valid_tap_fraction(length: int, rate: int) -> float:
    """Fraction of a 3-tap atrous filter's reads that land inside an axis.

    The centre tap always lands; each outer tap lands for ``length - rate``
    output positions (none once ``rate >= length``).

    Args:
        length: Size of the axis (feature-map height or width).
        rate: Dilation of the filter along that axis.
    """
    return (length + 2 * max(length - rate, 0)) / (3 * length)


def effective_kernel(height: int, width: int, rate: int) -> tuple[slice, slice, tuple[int, int]]:
    """Rows and columns of a 3x3 kernel at ``rate`` that ever read the map.

    When ``rate >= height`` the outer rows only ever read zero padding, so the
    branch is exactly a 1x3 convolution with the middle row (likewise for
    columns); when both degenerate it is a 1x1 convolution with the centre tap.

    Returns:
        ``(row_slice, col_slice, padding)`` to apply to the weight and conv.
    """
    rows = slice(1, 2) if rate >= height else slice(0, 3)
    cols = slice(1, 2) if rate >= width else slice(0, 3)
    padding = (0 if rate >= height else rate, 0 if rate >= width else rate)
    return rows, cols, padding


def tap_span(length: int, offset: int) -> tuple[int, int]:
    """Output positions ``[start, end)`` whose read at ``position + offset`` is in the map."""
    return max(0, -offset), min(length, length - offset)


def phase_groups(length: int, rate: int) -> list[tuple[int, int, int]]:
    """Phases of an axis read every ``rate`` positions, grouped by their size.

    Phase ``p`` holds positions ``p, p + rate, p + 2 * rate, ...``; a dilated
    filter at ``rate`` only ever combines positions of one phase. The first
    ``length % rate`` phases hold one position more than the rest.

    Returns:
        ``(first phase, end phase, positions per phase)`` for each non-empty group.
    """
    full, extra = divmod(length, rate)
    groups = []
    if extra:
        groups.append((0, extra, full + 1))
    if full:
        groups.append((extra, rate, full))
    return groups


def axis_tap_counts(length: int, rate: int) -> tuple[int, int, int]:
    """How many positions on an axis have 1, 2 and 3 of a 3-tap atrous filter's reads inside.

    Args:
        length: Size of the axis (feature-map height or width).
        rate: Dilation of the filter along that axis.
    """
    if length < 1 or rate < 1:
        raise ValueError(f"length and rate must be positive; got length={length}, rate={rate}")
    one_side = max(length - rate, 0)  # positions whose left (likewise right) tap lands
    both = max(length - 2 * rate, 0)
    two = 2 * (one_side - both)
    return length - two - both, two, both


def valid_weight_counts(height: int, width: int, rate: int) -> dict[int, float]:
    """Share of output positions at which exactly k of a 3x3 atrous filter's 9 weights
    read the feature map rather than zero padding (DeepLabV3, Fig. 4).

    Rows and columns are independent, so k is a product of per-axis counts.

    Args:
        height: Feature-map height.
        width: Feature-map width.
        rate: Atrous rate (dilation) of the filter.

    Returns:
        ``{k: fraction}`` for every possible k (1, 2, 3, 4, 6, 9); fractions sum to 1.
    """
    rows, cols = axis_tap_counts(height, rate), axis_tap_counts(width, rate)
    counts = dict.fromkeys((1, 2, 3, 4, 6, 9), 0.0)
    for r_taps, r_positions in zip((1, 2, 3), rows):
        for c_taps, c_positions in zip((1, 2, 3), cols):
            counts[r_taps * c_taps] += r_positions * c_positions / (height * width)
    return counts
