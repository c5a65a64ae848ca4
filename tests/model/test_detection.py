"""Lesion map post-processing: centre, size and ordering of findings; target spheres."""

from __future__ import annotations

import numpy as np

from mmclinic.model.detection import DetectionConfig, find_lesions, finding_risks, sphere_mask

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
