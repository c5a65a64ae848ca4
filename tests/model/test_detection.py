"""Lesion map post-processing: centre, size and ordering of findings; target spheres."""

from __future__ import annotations

import numpy as np

from mmclinic.model.detection import (
    DetectionConfig,
    find_lesion_regions,
    find_lesions,
    finding_risks,
    isolation_masks,
    sphere_mask,
)

SP = (5.0, 5.0, 5.0)


def test_sphere_roundtrip_centre_and_diameter() -> None:
    shape = (32, 32, 16)
    prob = np.zeros(shape)
    big = sphere_mask(shape, (10.4, 12.0, 7.6), 12.0, SP)  # 24 mm lesion
    small = sphere_mask(shape, (25.0, 25.0, 4.0), 5.0, SP)  # 10 mm lesion
    prob[big] = 0.95
    prob[small] = 0.6
    found = find_lesions(prob, SP, DetectionConfig(threshold=0.3, min_confidence=0.3))
    assert len(found) == 2
    assert found[0].confidence > found[1].confidence  # most confident first
    c = np.array(found[0].center_voxel)
    assert np.abs(c - [10.4, 12.0, 7.6]).max() < 0.6  # within a fraction of a voxel
    assert 18.0 < found[0].diameter_mm < 30.0
    assert found[1].diameter_mm < found[0].diameter_mm


def test_low_confidence_and_empty() -> None:
    prob = np.zeros((8, 8, 8))
    prob[2, 2, 2] = 0.35
    assert find_lesions(prob, SP, DetectionConfig(threshold=0.3, min_confidence=0.5)) == []
    assert find_lesions(np.zeros((4, 4, 4)), SP, DetectionConfig()) == []


def test_subvoxel_lesion_still_gets_target_voxel() -> None:
    m = sphere_mask((8, 8, 8), (3.2, 3.7, 4.0), 1.5, SP)
    assert m.sum() == 1 and m[3, 4, 4]


def test_finding_risks_scale_by_confidence() -> None:
    assert finding_risks(0.8, [0.9, 0.45]) == [0.8, 0.4]
    assert finding_risks(0.5, []) == []


def test_regions_label_each_returned_finding_and_isolation_masks_cover_the_others() -> None:
    prob = np.zeros((16, 16, 8))
    prob[2:4, 2:4, 2:4] = 0.6  # weaker, found second
    prob[10:13, 10:13, 3:6] = 0.9
    prob[10:13, 10:13, 2] = 0.2  # the stronger one's sub-threshold rim
    prob[7, 14, 1] = 0.35  # below min_confidence: a component, not a finding
    found, regions = find_lesion_regions(prob, SP, DetectionConfig(threshold=0.3, min_confidence=0.5))
    assert [f.confidence for f in found] == [0.9, 0.6] and found == find_lesions(prob, SP, DetectionConfig(0.3, 0.5))
    assert regions.dtype == np.int32 and set(np.unique(regions)) == {0, 1, 2}
    assert (regions == 1).sum() == 27 and (regions == 2).sum() == 8 and regions[7, 14, 1] == 0
    masks = isolation_masks(regions, 2)
    assert masks.shape == (2, 16, 16, 8)
    # Finding 1 alone: finding 2's voxels and their one-voxel rim are suppressed, its own never.
    assert masks[0][regions == 2].all() and not masks[0][regions == 1].any()
    assert masks[0][1, 1, 1] and not masks[0][0, 0, 0]
    assert masks[1][regions == 1].all() and masks[1][10:13, 10:13, 2].all()  # the rim goes too
    assert not masks[1][regions == 2].any() and not masks[1][7, 14, 1]
    # One finding: nothing to suppress.
    single = np.where(regions == 2, 0, regions)
    assert not isolation_masks(single, 1).any()
