"""The struct-based header reader gives parse_instance the same outcome as pydicom, or hands the file to pydicom."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import pydicom
import pytest

from mmclinic.errors import InputError
from mmclinic.store import dicomheader, dicomstore
from mmclinic.store.testing import make_ct_dicom

# Listed directly: pydicom's test-data lookup tries to download what it lacks.
PYDICOM_FILES = sorted(p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*") if p.is_file())


def _outcome(data: bytes, monkeypatch: pytest.MonkeyPatch, *, fast: bool) -> tuple[object, ...]:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(dicomheader, "read_identifiers", lambda _data: None)
        try:
            p = dicomstore.parse_instance(data)
        except InputError as exc:
            return ("refused", exc.reason)
    return ("ok", p.study_uid, p.series_uid, p.sop_uid, p.modality, p.sop_class, p.sha256)


def _variants(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    """The file, cut short at random points, and with one random bit of its header flipped."""
    out = [data]
    top = min(len(data), 4000)
    for _ in range(n if top > 140 else 0):
        out.append(data[: rng.randrange(132, top)])
        flipped = bytearray(data)
        flipped[rng.randrange(132, top)] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
    return out


def test_same_outcome_as_pydicom_on_its_test_files_and_damaged_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(PYDICOM_FILES) > 100
    rng = random.Random(20261201)
    fast_originals = compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the damaged values it still reads
        for path in PYDICOM_FILES:
            original = path.read_bytes()
            for data in _variants(original, rng, 6):
                if dicomheader.read_identifiers(data) is None:
                    continue  # pydicom's alone: nothing to compare
                compared += 1
                fast_originals += data is original
                assert _outcome(data, monkeypatch, fast=True) == _outcome(data, monkeypatch, fast=False), path.name
    # The comparison means something only if the short path takes most clean files and many damaged ones.
    assert fast_originals >= 120 and compared >= 600


def test_reads_explicit_and_implicit_ct_files() -> None:
    explicit = make_ct_dicom("1.2.3", "1.2.3.4", "1.2.3.4.5")
    ds = pydicom.dcmread(io.BytesIO(explicit))
    ds.ReferencedImageSequence = [pydicom.Dataset(), pydicom.Dataset()]  # undefined-length sequence, two items
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "9.9.9"  # nested UIDs are not the instance's
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    for data in (explicit, buf.getvalue()):
        found = dicomheader.read_identifiers(data)
        assert found == {
            dicomheader.MEDIA_SOP_CLASS: "1.2.840.10008.5.1.4.1.1.2",
            dicomheader.SOP_CLASS: "1.2.840.10008.5.1.4.1.1.2",
            dicomheader.SOP_INSTANCE: "1.2.3.4.5",
            dicomheader.MODALITY: "CT",
            dicomheader.STUDY_INSTANCE: "1.2.3",
            dicomheader.SERIES_INSTANCE: "1.2.3.4",
        }


def test_leaves_what_it_does_not_vouch_for_to_pydicom() -> None:
    ct = make_ct_dicom("1.2.3", "1.2.3.4", "1.2.3.4.5")
    ds = pydicom.dcmread(io.BytesIO(ct))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    big = io.BytesIO()
    pydicom.dcmwrite(big, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    two_values = ct.replace(b"1.2.3.4.5\x00", b"1.2\\3.4.5")  # same length, now a two-valued UID
    cut_in_pixel_header = ct[: ct.index(b"\xe0\x7f\x10\x00") + 6]
    # Cut inside an element's value (a fixed byte count could land on an element boundary: the random
    # ImplementationClassUID makes the header's length vary from file to file).
    cut_in_value = ct[: ct.index(b"\x28\x00\x30\x00DS") + 10]
    # An identifying element under another VR: pydicom would read it as that VR (US: a number).
    modality_as_us = ct.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00US")
    uid_as_lo = ct.replace(b"\x20\x00\x0d\x00UI", b"\x20\x00\x0d\x00LO")
    assert modality_as_us != ct and uid_as_lo != ct
    for data in (big.getvalue(), two_values, cut_in_pixel_header, cut_in_value, b"\0" * 200, modality_as_us, uid_as_lo):
        assert dicomheader.read_identifiers(data) is None
    with pytest.raises(InputError) as ei, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomstore.parse_instance(two_values)
    assert ei.value.reason == "dicom.missing_uid"


def test_a_value_pydicom_cannot_convert_is_refused_not_raised() -> None:
    """A corrupt VR on an identifying element made pydicom raise NotImplementedError from getattr,
    outside parse_instance's error handling (a 0xC002 store failure instead of a clear refusal)."""
    ct = make_ct_dicom("1.2.3", "1.2.3.4", "1.2.3.4.5")
    at = ct.index(b"\x08\x00\x18\x00UI")  # SOP Instance UID, explicit VR
    broken = ct[: at + 4] + b"UA" + ct[at + 6 :]
    assert dicomheader.read_identifiers(broken) is None
    with pytest.raises(InputError) as ei, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomstore.parse_instance(broken)
    assert ei.value.reason == "dicom.unreadable"
