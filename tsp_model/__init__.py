"""TSP: semi-supervised active learning for instance segmentation via triplet scoring predictions."""

import os

# OpenMP threads that spin while waiting turn a shared CPU (another job, Label Studio, the
# backend) into a 4-10x slowdown of every training step: measured here, one tiny_fpn cycle took
# 25 s with 2 spinning threads and 6 s with passive ones at load 2.5 on 2 cores. Set before torch
# loads its OpenMP runtime; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["TSPMaskRCNN", "build_model", "__version__"]


def __getattr__(name: str) -> object:
    # the network on first use: importing tsp_model (its config, records, atomic writes) must not
    # load torch, so a command that only reads files starts at once
    if name in ("TSPMaskRCNN", "build_model"):
        from tsp_model.nn import model

        return getattr(model, name)
    raise AttributeError(f"module 'tsp_model' has no attribute {name!r}")
