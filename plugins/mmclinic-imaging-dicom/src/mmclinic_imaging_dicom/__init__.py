"""mmclinic-imaging-dicom: the ``ct-dicom`` modality plugin (CT DICOM series → volume → image tokens)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmclinic-imaging-dicom")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

from mmclinic_imaging_dicom.coords import (
    nearest_source_slice,
    patient_mm_to_voxel,
    voxel_size_mm,
    voxel_to_patient_mm,
)

__all__ = ["__version__", "nearest_source_slice", "patient_mm_to_voxel", "voxel_size_mm", "voxel_to_patient_mm"]
