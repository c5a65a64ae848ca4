"""DICOM SEG of the lesion mask: one binary segment, a sphere per finding drawn on the source slices (highdicom)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from mmclinic import __version__
from mmclinic.case import Prediction
from mmclinic.pacs.sr import ResultIds

SEG_SERIES_NUMBER = 9902


def _frame_planes(sources: Sequence[Dataset]) -> list[tuple[Any, Any, Any, float, float]]:
    """``(origin, row_dir, col_dir, row spacing, column spacing)`` of every frame, in source order.

    Single-frame images carry their plane at the top level; a multi-frame (Enhanced CT) image in
    its functional groups, per frame where present, else shared.
    """
    import numpy as np

    def plane(position: Any, orientation: Any, spacing: Any) -> tuple[Any, Any, Any, float, float]:
        iop = np.asarray([float(v) for v in orientation])
        return np.asarray([float(v) for v in position]), iop[:3], iop[3:], float(spacing[0]), float(spacing[1])

    def grouped(item: Dataset, shared: Dataset, seq: str, keyword: str) -> Any:
        for holder in (item, shared):
            if seq in holder and keyword in holder[seq].value[0]:
                return holder[seq].value[0][keyword].value
        raise KeyError(keyword)

    planes = []
    for ds in sources:
        if "PerFrameFunctionalGroupsSequence" not in ds:
            planes.append(plane(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing))
            continue
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
        for item in ds.PerFrameFunctionalGroupsSequence:
            planes.append(
                plane(
                    grouped(item, shared, "PlanePositionSequence", "ImagePositionPatient"),
                    grouped(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"),
                    grouped(item, shared, "PixelMeasuresSequence", "PixelSpacing"),
                )
            )
    return planes


def lesion_mask(pred: Prediction, sources: Sequence[Dataset]) -> Any:
    """Boolean ``[frames, rows, cols]`` mask: voxels whose LPS centre lies inside a finding's sphere."""
    import numpy as np

    planes = _frame_planes(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    mask = np.zeros((len(planes), rows, cols), dtype=bool)
    jj, ii = np.mgrid[0:rows, 0:cols]
    for k, (origin, row_dir, col_dir, dr, dc) in enumerate(planes):
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

    # Single-frame slices in z order; a multi-frame image keeps its own frame order (highdicom
    # takes one multi-frame source, and the mask follows its frames).
    multi = any("PerFrameFunctionalGroupsSequence" in d for d in sources)
    ordered = list(sources) if multi else sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))
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
