"""DICOM SEG of the lesion mask: one binary segment, a sphere per finding drawn on the source slices (highdicom)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from mmclinic import __version__
from mmclinic.case import Prediction
from mmclinic.pacs.sr import ResultIds

SEG_SERIES_NUMBER = 9902


def lesion_mask(pred: Prediction, sources: Sequence[Dataset]) -> Any:
    """Boolean ``[slices, rows, cols]`` mask: voxels whose LPS centre lies inside a finding's sphere."""
    import numpy as np

    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    mask = np.zeros((len(sources), rows, cols), dtype=bool)
    jj, ii = np.mgrid[0:rows, 0:cols]
    for k, ds in enumerate(sources):
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = [float(v) for v in ds.ImageOrientationPatient]
        row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        # PS3.3 C.7.6.2.1.1: P = origin + row_dir * col_index * dc + col_dir * row_index * dr
        pts = origin + ii[..., None] * dc * row_dir + jj[..., None] * dr * col_dir
        for f in pred.findings:
            d2 = ((pts - np.asarray(f.center_mm)) ** 2).sum(axis=-1)
            mask[k] |= d2 <= (f.diameter_mm / 2.0) ** 2
    return mask


def build_seg(pred: Prediction, ids: ResultIds, sources: Sequence[Dataset]) -> Dataset | None:
    """The SEG, or ``None`` when no finding touches a source voxel (an empty SEG says nothing useful)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ordered = sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))
    mask = lesion_mask(pred, ordered)
    if not mask.any():
        return None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"mmclinic {pred.task}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=pred.provenance.task_version,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=list(ordered),
        pixel_array=mask.astype("uint8"),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=ids.seg_series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=ids.seg_sop_uid,
        instance_number=1,
        manufacturer="mmclinic",
        manufacturer_model_name=f"mmclinic {pred.task}"[:64],
        software_versions=__version__,
        device_serial_number=ids.device_uid[-16:],
        series_description="mmclinic lesion mask",
    )
    return seg
