"""Data: image reading, COCO and pseudo-labeled datasets, train transforms, DICOM slices."""
