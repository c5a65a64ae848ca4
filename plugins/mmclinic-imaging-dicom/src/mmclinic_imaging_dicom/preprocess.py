"""Volume → model input with MONAI: RAS orientation, resampling, HU window, crop/pad; the affine follows."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.croppad.array import ResizeWithPadOrCrop
from monai.transforms.intensity.array import ScaleIntensityRange
from monai.transforms.spatial.array import Orientation, Spacing, Zoom

from mmclinic.plugin_api import ImagingSpec
from mmclinic.threads import torch_threads
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
    """HU volume as a channel-first MetaTensor [1, slice, row, column] with its RAS affine.

    The array keeps the decoded memory layout (slices outermost): the affine's columns are permuted
    instead of the voxels, and ``Orientation`` reorders axes later, after downsampling made it cheap.
    """
    # numpy, single-threaded: on a busy machine torch's thread pool stalls on small element-wise ops.
    image = torch.from_numpy(volume.hu()).unsqueeze(0)
    affine = LPS_TO_RAS @ volume.geometry.affine_lps[:, [2, 1, 0, 3]]
    return MetaTensor(image, affine=torch.as_tensor(affine, dtype=torch.float64), meta={"space": "RAS"})


def _block_average(img: MetaTensor, spacing_mm: tuple[float, float, float]) -> MetaTensor:
    """Area-average axes that will be downsampled by >= 1.5x, so thin noisy slices do not alias."""
    affine = img.affine.numpy()[:3, :3]
    current = np.linalg.norm(affine, axis=0)
    # The target spacing is given in RAS axis order; find the patient axis each array axis runs along.
    target = np.asarray(spacing_mm, dtype=np.float64)[np.argmax(np.abs(affine), axis=0)]
    factors = target / current
    shape = img.shape[1:]
    # Only axes that keep at least two voxels after averaging (a single slice stays as it is).
    zoom = [1.0 / f if f >= _ANTIALIAS_FACTOR and n / f >= 2 else 1.0 for f, n in zip(factors, shape, strict=True)]
    if all(z == 1.0 for z in zoom):
        return img
    out = Zoom(zoom=zoom, mode="area", keep_size=False)(img)
    assert isinstance(out, MetaTensor)
    return out


def preprocess(
    volume: Volume, imaging: ImagingSpec, antialias: bool = True, threads: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Model input float32 [1, X, Y, Z] in [0, 1] and its voxel → LPS mm affine."""
    with torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI deprecation chatter on every call
        img: torch.Tensor = to_metatensor(volume)
        if antialias:
            assert isinstance(img, MetaTensor)
            img = _block_average(img, imaging.spacing_mm)
        # After the block average, so the axis flips of LPS → RAS move a small array.
        img = Orientation(axcodes="RAS", labels=None)(img)
        img = Spacing(pixdim=imaging.spacing_mm, mode="bilinear", padding_mode="border", dtype=np.float32)(img)
        lo, hi = imaging.hu_window
        img = torch.as_tensor(ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img))
        # Padding with 0 = the window minimum, i.e. air when the window starts at -1000 HU.
        img = ResizeWithPadOrCrop(spatial_size=imaging.size, mode="constant")(img)
    assert isinstance(img, MetaTensor)  # MONAI keeps the affine on the MetaTensor through every step
    affine_lps = LPS_TO_RAS @ img.affine.numpy().astype(np.float64)
    array = np.ascontiguousarray(img.as_tensor().numpy(), dtype=np.float32)
    return array, affine_lps
