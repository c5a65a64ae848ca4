"""Imaging plugin: every transfer syntax PACS send — written by pydicom's encoders, dcmtk, or bundled files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from imaging_dicom_factory import (
    SPEC,
    TEST_FILES,
    SeriesGeometry,
    SeriesOptions,
    folder_ref,
    hu_volume,
    make_plugin,
    require,
    require_tool,
    write_ct_series,
    write_enhanced_ct,
)
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

GEOM = SeriesGeometry(rows=32, cols=32, n_slices=6)
VOLUME = hu_volume(GEOM, blob_at=(10, 20, 3))


def _encoder_available(ts: str, plugin: str) -> bool:
    try:
        return plugin in get_encoder(ts).available_plugins
    except (NotImplementedError, ValueError):
        return False


@pytest.mark.parametrize(
    ("ts", "encoder", "lossless"),
    [
        (RLELossless, "pydicom", True),
        (RLELossless, "pylibjpeg", True),
        (JPEGLSLossless, "pyjpegls", True),
        (JPEGLSNearLossless, "pyjpegls", False),
        (JPEG2000Lossless, "pylibjpeg", True),
    ],
)
def test_compressed_series_written_by_pydicom(tmp_path: Path, ts: str, encoder: str, lossless: bool) -> None:
    require(_encoder_available(ts, encoder), f"pydicom encoder plugin {encoder!r} for {UID(ts).name} is not installed")
    kwargs = {} if lossless else {"jls_error": 3}
    opts = SeriesOptions(transfer_syntax=ts, encoding_plugin=encoder, compress_kwargs=kwargs)
    write_ct_series(tmp_path, GEOM, opts, volume=VOLUME)
    volume, summary = make_plugin().load_volume(folder_ref(tmp_path), SPEC)
    assert summary["series"][0]["transfer_syntaxes"] == [ts]
    # The plugin's decoder choice, whatever wrote the file: CharLS for JPEG-LS, pylibjpeg for the rest.
    assert volume.decoders == {ts: "pyjpegls" if "JPEG-LS" in UID(ts).name else "pylibjpeg"}
    error = np.abs(volume.hu() - VOLUME).max()
    if lossless:
        assert error == 0
    else:
        assert 0 < error <= 3  # near-lossless: bounded by the JPEG-LS NEAR parameter (slope 1)


@pytest.mark.parametrize(
    ("option", "ts", "max_error"),
    [
        ("+e1", "1.2.840.10008.1.2.4.70", 0.0),  # JPEG lossless SV1, what most PACS use for CT
        ("+el", "1.2.840.10008.1.2.4.57", 0.0),  # JPEG lossless, process 14
        ("+ee", "1.2.840.10008.1.2.4.51", 40.0),  # JPEG extended 12-bit (lossy)
        ("+eb", "1.2.840.10008.1.2.4.50", 150.0),  # JPEG baseline 8-bit (lossy, dcmtk rescales)
    ],
)
def test_jpeg_series_written_by_dcmtk(tmp_path: Path, option: str, ts: str, max_error: float) -> None:
    dcmcjpeg = require_tool("dcmcjpeg")
    paths = write_ct_series(tmp_path / "raw", GEOM, volume=VOLUME)
    out = tmp_path / "jpeg"
    out.mkdir()
    for path in paths:
        subprocess.run([dcmcjpeg, option, str(path), str(out / path.name)], check=True, capture_output=True)
    plugin = make_plugin()
    volume, summary = plugin.load_volume(folder_ref(out), SPEC)
    assert summary["series"][0]["transfer_syntaxes"] == [ts]
    assert volume.decoders == {ts: "pylibjpeg"}
    error = float(np.abs(volume.hu() - VOLUME).max())
    assert error <= max_error
    # Lossy or not, the blob must be where it was: the model input is usable.
    mi = plugin.load(folder_ref(out), SPEC)
    raw = plugin.load(folder_ref(tmp_path / "raw"), SPEC)
    assert np.abs(mi.data["image"] - raw.data["image"]).mean() < 0.02


def test_enhanced_multiframe_rle(tmp_path: Path) -> None:
    opts = SeriesOptions(
        sop_class=EnhancedCTImageStorage,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL", "NONE"),
        transfer_syntax=RLELossless,
        encoding_plugin="pylibjpeg",
    )
    write_enhanced_ct(tmp_path / "mf.dcm", GEOM, opts, volume=VOLUME)
    volume, summary = make_plugin().load_volume(folder_ref(tmp_path), SPEC)
    assert summary["series"][0]["frames"] == GEOM.n_slices
    assert np.array_equal(volume.hu(), VOLUME)


@pytest.mark.parametrize(
    "name",
    [
        "693_J2KI.dcm",  # CT, JPEG 2000 (lossy)
        "J2K_pixelrep_mismatch.dcm",  # CT, JPEG 2000 lossless with a signedness mismatch in the codestream
        "CT_small.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_bundled_compressed_files_decode_like_pydicom(tmp_path: Path, name: str) -> None:
    """pydicom's own compressed samples (not CT) go through our decode path once the rules allow them."""
    src = TEST_FILES / name
    require(src.is_file(), f"pydicom test file {name} missing")
    ds = pydicom.dcmread(src)
    (tmp_path / name).write_bytes(src.read_bytes())
    plugin = make_plugin(
        selection={
            "modalities": [str(ds.get("Modality", ""))],
            "sop_classes": [str(ds.SOPClassUID)],
            "min_slices": 1,
            "excluded_image_types": [],
            "require_axial": False,
            "slice_thickness_mm": (0.01, 100.0),
        }
    )
    volume, _ = plugin.load_volume(folder_ref(tmp_path), SPEC)
    reference = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    assert np.allclose(volume.hu()[0], reference * slope + intercept)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize(("signed", "bits_stored"), [(0, 12), (1, 12), (0, 16), (1, 16)])
def test_native_fast_path_matches_pydicom(tmp_path: Path, ts: str, signed: int, bits_stored: int) -> None:
    """The numpy path for uncompressed data masks/sign-extends exactly like pydicom's decoder."""
    paths = write_ct_series(tmp_path, GEOM, SeriesOptions(transfer_syntax=ts))
    rng = np.random.default_rng(bits_stored + signed)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
        raw = rng.integers(0, 1 << 16, (GEOM.rows, GEOM.cols), dtype=np.uint16)  # stray high bits included
        ds.PixelData = raw.astype(">u2" if ts == ExplicitVRBigEndian else "<u2").tobytes()
        ds.save_as(path)
    volume, _ = make_plugin().load_volume(folder_ref(tmp_path), SPEC)
    assert volume.decoders == {ts: "numpy"}
    reference = np.stack([pydicom.dcmread(p).pixel_array for p in paths])
    assert volume.stored.dtype == reference.dtype.newbyteorder("=")
    assert np.array_equal(volume.stored, reference)
