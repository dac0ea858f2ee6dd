"""Synthetic DICOM files for tests: known HU values plus identifying tags that must not leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-123456",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "ACC-987",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20260101",
    "StudyTime": "101010",
}

# Stored values with slope 1, intercept -1024: HU = stored - 1024.
HU_VALUES = np.array([[-1024, -10, 0, 20], [40, 60, 80, 2000]], dtype=np.int32)


def write_ct(
    path: Path,
    hu: np.ndarray = HU_VALUES,
    *,
    series: str | None = None,
    instance: int = 1,
    sop: str | None = None,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = -1024.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """A minimal CT image storage file with identifying tags and known HU values."""
    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series or "1.2.826.0.1.3680043.8.498.2"
    ds.InstanceNumber = instance
    ds.Modality = "CT"
    ds.SliceThickness = "5.0"
    ds.PixelSpacing = ["0.5", "0.5"]
    for tag, value in IDENTIFYING.items():
        setattr(ds, tag, value)
    stored = np.round((hu - intercept) / slope).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if stored.max() < 4096 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
    else:  # fake compressed payload: only the transfer syntax matters for the error path
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3not-a-real-jpeg\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path
