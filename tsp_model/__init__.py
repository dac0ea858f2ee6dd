"""TSP: semi-supervised active learning for instance segmentation via triplet scoring predictions."""

import os

# OpenMP threads that spin while waiting turn a shared CPU (another job, Label Studio, the
# backend) into a 4-10x slowdown of every training step: measured here, one tiny_fpn cycle took
# 25 s with 2 spinning threads and 6 s with passive ones at load 2.5 on 2 cores. Set before torch
# loads its OpenMP runtime; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .model import TSPMaskRCNN, build_model  # noqa: E402

__all__ = ["TSPMaskRCNN", "build_model", "__version__"]
