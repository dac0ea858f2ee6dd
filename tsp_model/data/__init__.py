"""Data: image reading, COCO and pseudo-labeled datasets, train transforms, head-CT phantoms."""

from tsp_model.data.coco import CocoInstanceDataset, collate_fn, write_coco
from tsp_model.data.image_io import ImageError, read_image, to_tensor, verify_image
from tsp_model.data.phantom import CLASS_NAMES as PHANTOM_CLASS_NAMES
from tsp_model.data.phantom import generate_phantoms
from tsp_model.data.pseudo import PseudoLabelDataset

__all__ = [
    "CocoInstanceDataset",
    "ImageError",
    "PHANTOM_CLASS_NAMES",
    "PseudoLabelDataset",
    "collate_fn",
    "generate_phantoms",
    "read_image",
    "to_tensor",
    "verify_image",
    "write_coco",
]
