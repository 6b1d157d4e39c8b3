"""The arithmetic of the exact convolution algorithms, as plain tensor functions.

* ``winograd.py``: Winograd F(2x2, 3x3) and F(4x4, 3x3), phase-wise for dilated kernels, with
  both gradients;
* ``tap_gemm.py``: one GEMM per kernel tap over exactly the pixels it reaches;
* ``tap_skipping.py``: channels-last dilated convolutions whose backward skips out-of-map taps.

Nothing here chooses anything: ``..algorithms`` wraps each behind one interface and
``..planner`` picks one per convolution.
"""
