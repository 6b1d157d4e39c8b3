"""Exact ways to compute one convolution, behind one interface (``base.py``).

The planner (``..planner``) picks one per convolution; a new candidate is one file here plus
its line below.
"""
from .base import Algorithm, ConvProblem
from .dense import Dense
from .depthwise import DepthwiseTaps
from .gemm import PerTapGemm
from .skip import TapSkipping
from .winograd import Winograd, Winograd4

ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (Dense(), TapSkipping(), PerTapGemm(), Winograd(), Winograd4(), DepthwiseTaps())
}

__all__ = ["ALGORITHMS", "Algorithm", "ConvProblem"]
