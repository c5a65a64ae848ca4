"""Volume → model input with MONAI: RAS orientation, resampling, HU window, crop/pad; the affine follows."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from mmclinic.plugin_api import ImagingSpec
from monai.data import MetaTensor
from monai.transforms import Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing, Zoom

from mmclinic_imaging_dicom.coords import LPS_TO_RAS
from mmclinic_imaging_dicom.pixels import Volume

# Downsampling by at least this factor on an axis gets block averaging first (anti-aliasing).
_ANTIALIAS_FACTOR = 1.5


def preprocessing_params(imaging: ImagingSpec, antialias: bool) -> dict[str, Any]:
    """What determines the model input besides the pixels (hashed into provenance)."""
    return {
        "orientation": "RAS",
        "spacing_mm": list(imaging.spacing_mm),
        "size": list(imaging.size),
        "hu_window": list(imaging.hu_window),
        "interpolation": "bilinear",
        "antialias": antialias,
        "pad": "window minimum",
    }


def to_metatensor(volume: Volume) -> MetaTensor:
    """HU volume as a channel-first MetaTensor [1, X, Y, Z] with its RAS affine."""
    hu = torch.from_numpy(volume.stored).to(torch.float32)
    slope, intercept = volume.slope, volume.intercept
    # The usual case (one rescale for the whole series) is two in-place scalar ops.
    if np.all(slope == slope[0]) and np.all(intercept == intercept[0]):
        hu.mul_(float(slope[0])).add_(float(intercept[0]))
    else:
        hu.mul_(torch.from_numpy(slope)[:, None, None]).add_(torch.from_numpy(intercept)[:, None, None])
    image = hu.permute(2, 1, 0).unsqueeze(0)  # [Z, Y, X] → [1, X, Y, Z]: i = column, j = row, k = slice
    affine = torch.as_tensor(LPS_TO_RAS @ volume.geometry.affine_lps, dtype=torch.float64)
    return MetaTensor(image, affine=affine, meta={"space": "RAS"})


def preprocess(volume: Volume, imaging: ImagingSpec, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Model input float32 [1, X, Y, Z] in [0, 1] and its voxel → LPS mm affine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI deprecation chatter on every call
        img = Orientation(axcodes="RAS", labels=None)(to_metatensor(volume))
        assert isinstance(img, MetaTensor)
        if antialias:
            current = np.linalg.norm(img.affine.numpy()[:3, :3], axis=0)
            factors = np.asarray(imaging.spacing_mm, dtype=np.float64) / current
            shape = img.shape[1:]
            # Only axes that keep at least two voxels after averaging (a single slice stays as it is).
            zoom = [1.0 / f if f >= _ANTIALIAS_FACTOR and n / f >= 2 else 1.0 for f, n in zip(factors, shape, strict=True)]
            if any(z != 1.0 for z in zoom):
                img = Zoom(zoom=zoom, mode="area", keep_size=False)(img)
        img = Spacing(pixdim=imaging.spacing_mm, mode="bilinear", padding_mode="border", dtype=torch.float32)(img)
        lo, hi = imaging.hu_window
        img = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)
        # Padding with 0 = the window minimum, i.e. air when the window starts at -1000 HU.
        img = ResizeWithPadOrCrop(spatial_size=imaging.size, mode="constant")(img)
    assert isinstance(img, MetaTensor)
    affine_lps = LPS_TO_RAS @ img.affine.numpy().astype(np.float64)
    array = np.ascontiguousarray(img.as_tensor().numpy(), dtype=np.float32)
    return array, affine_lps
