"""The plugin's configuration: declarative series-selection rules, safety caps and decoding choices."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"


class SelectionRules(BaseModel):
    """Which series of a study may feed the model, and which of the eligible ones wins.

    Every rule is data, so a site can tune it in ``mmclinic.toml`` (``[plugins.ct-dicom.selection]``)
    without code. A series failing a rule is skipped and the rule's code is recorded in the summary.
    """

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    sop_classes: list[str] = Field(
        default_factory=lambda: [
            CT_IMAGE_STORAGE,
            ENHANCED_CT_IMAGE_STORAGE,
            LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
        ]
    )
    # Any of these values anywhere in ImageType (or FrameType) disqualifies the series:
    # scouts/topograms and screen captures are not volumes.
    excluded_image_types: list[str] = Field(default_factory=lambda: ["LOCALIZER", "SECONDARY", "PROJECTION"])
    # Case-insensitive regular expressions matched against SeriesDescription.
    excluded_descriptions: list[str] = Field(
        default_factory=lambda: [r"scout", r"topogram", r"localizer", r"surview", r"dose\s*(report|info)"]
    )
    require_axial: bool = True
    # Gantry tilt up to this angle still counts as axial (the affine carries the shear).
    max_tilt_deg: float = Field(default=30.0, ge=0.0, le=90.0)
    slice_thickness_mm: tuple[float, float] = (0.3, 10.0)
    min_slices: int = Field(default=16, ge=1)
    prefer: Literal["closest_to_target", "thinnest", "thickest", "most_slices"] = "closest_to_target"

    @model_validator(mode="after")
    def _check_range(self) -> SelectionRules:
        lo, hi = self.slice_thickness_mm
        if not 0 < lo <= hi:
            raise ValueError("slice_thickness_mm must be (min, max) with 0 < min <= max")
        return self


class CtDicomConfig(BaseModel):
    """Configuration of the ``ct-dicom`` modality plugin (validated by the registry)."""

    model_config = ConfigDict(extra="forbid")

    selection: SelectionRules = Field(default_factory=SelectionRules)
    # Largest volume accepted, in voxels, checked from headers before any pixel is decoded.
    max_voxels: int = Field(default=512 * 512 * 1024, gt=0)
    # Largest number of files scanned for one study (a mis-pointed folder must not run for hours).
    max_files: int = Field(default=20000, gt=0)
    # A DICOM file (DICM prefix) whose header cannot be read cannot be attributed to a series; it may be
    # a slice of the chosen one, so by default the whole study is rejected rather than silently thinned.
    reject_unreadable_files: bool = True
    # Relative tolerance on the slice step (0.1 = a step may differ 10 % from the mean step).
    spacing_tolerance: float = Field(default=0.1, gt=0.0, lt=1.0)
    # Largest angle between the orientations of two slices of the same series.
    orientation_tolerance_deg: float = Field(default=0.5, gt=0.0)
    # Pixel decoders in order of preference; the first one pydicom offers for a transfer syntax is used,
    # else pydicom's own order. Measured (bench_imaging): pylibjpeg-rle ~8x pydicom's RLE decoder,
    # pylibjpeg-openjpeg ~ Pillow for JPEG 2000, pyjpegls (CharLS) ~2x pylibjpeg-libjpeg for JPEG-LS.
    decoding_plugins: list[str] = Field(default_factory=lambda: ["pyjpegls", "pylibjpeg"])
    # Threads that read and hash files while the main thread decodes (I/O and SHA-256 release the GIL).
    io_threads: int = Field(default=2, ge=1, le=16)
    # Torch intra-op threads while preprocessing (0 = leave torch's setting). Volumes of 1e5–1e7 voxels gain
    # little from more, and on a loaded host the thread pool's barriers stall: 45 ms vs 3 ms measured for
    # 64×64×32 with two threads vs one on a 2-core machine shared with other jobs.
    preprocess_threads: int = Field(default=1, ge=0, le=64)
    # Block-average before resampling when downsampling, so thin noisy slices do not alias.
    antialias: bool = True
    # Encoder shape: BasicUNet feature counts (6 values) and the pooled token grid.
    encoder_features: tuple[int, int, int, int, int, int] = (8, 8, 16, 32, 64, 8)
    token_grid: tuple[int, int, int] = (2, 2, 2)
