"""TSP: semi-supervised active learning for instance segmentation via triplet scoring predictions."""

__version__ = "0.1.0"

from .model import TSPMaskRCNN, build_model  # noqa: E402

__all__ = ["TSPMaskRCNN", "build_model", "__version__"]
