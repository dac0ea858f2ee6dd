"""TSP: semi-supervised active learning for instance segmentation via triplet scoring predictions."""

__version__ = "0.1.0"
