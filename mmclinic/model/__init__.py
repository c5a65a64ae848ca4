"""Fusion model, calibration and lesion detection post-processing (torch; no plugin imports)."""

from mmclinic.model.detection import DetectionConfig, VoxelFinding, find_lesions, finding_risks
from mmclinic.model.fusion import HEADS, Batch, FusionConfig, FusionModel, ModelOutput

__all__ = [
    "HEADS",
    "Batch",
    "DetectionConfig",
    "FusionConfig",
    "FusionModel",
    "ModelOutput",
    "VoxelFinding",
    "find_lesions",
    "finding_risks",
]
