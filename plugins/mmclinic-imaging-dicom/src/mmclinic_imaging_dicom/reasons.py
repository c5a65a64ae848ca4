"""Stable reason codes of the imaging plugin (InputError.reason and per-series skip reasons)."""

from __future__ import annotations

import re

# Rejections (InputError.reason). Documented in the plugin README; never rename one.
BAD_REFERENCE = "dicom.bad_reference"
NOT_FOUND = "dicom.not_found"
NO_IMAGE_SERIES = "dicom.no_image_series"
NOT_CT = "dicom.not_ct"
NO_SUITABLE_SERIES = "dicom.no_suitable_series"
NO_PIXEL_DATA = "dicom.no_pixel_data"
PIXEL_LENGTH_MISMATCH = "dicom.pixel_length_mismatch"
NONUNIFORM_SPACING = "dicom.nonuniform_spacing"
MIXED_ORIENTATION = "dicom.mixed_orientation"
INCONSISTENT_GEOMETRY = "dicom.inconsistent_geometry"
MISSING_GEOMETRY = "dicom.missing_geometry"
TRUNCATED = "dicom.truncated"
TOO_LARGE = "dicom.too_large"
UNREADABLE = "dicom.unreadable"
UNSUPPORTED_TRANSFER_SYNTAX = "dicom.unsupported_transfer_syntax"

# Selection-rule codes recorded per skipped series (ModalityInput.summary["series"][i]["reasons"]).
RULE_NOT_IMAGE = "rule.not_image"
RULE_MODALITY = "rule.modality"
RULE_SOP_CLASS = "rule.sop_class"
RULE_IMAGE_TYPE = "rule.image_type"
RULE_DESCRIPTION = "rule.description"
RULE_NOT_AXIAL = "rule.not_axial"
RULE_THICKNESS = "rule.slice_thickness"
RULE_MIN_SLICES = "rule.min_slices"
RULE_SAMPLES_PER_PIXEL = "rule.samples_per_pixel"
RULE_NO_SERIES_UID = "rule.no_series_uid"
RANK_NOT_PREFERRED = "rank.not_preferred"

# The order in which series defects are reported when the winning series has several.
DEFECT_PRIORITY = (
    TOO_LARGE,
    UNSUPPORTED_TRANSFER_SYNTAX,
    TRUNCATED,
    NO_PIXEL_DATA,
    PIXEL_LENGTH_MISMATCH,
    MISSING_GEOMETRY,
    MIXED_ORIENTATION,
    INCONSISTENT_GEOMETRY,
    NONUNIFORM_SPACING,
)


# Two or more path separators: a file path, which in a PACS spool may contain a patient's name.
_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\"]*[/\\][^\s'\"]*")


def describe(exc: BaseException) -> str:
    """An exception as InputError detail text: type and message, file paths removed, length bounded."""
    return f"{type(exc).__name__}: {_PATH.sub('<path>', str(exc))[:300]}"
