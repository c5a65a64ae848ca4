"""Deterministic DICOM UIDs (2.25 form) so that a rebuilt or re-sent result keeps the same identity."""

from __future__ import annotations

import hashlib


def derived_uid(*parts: str) -> str:
    """A ``2.25.<int>`` UID from the SHA-256 of ``parts``: same parts, same UID; at most 44 characters."""
    digest = hashlib.sha256("\x1f".join(("mmclinic", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def result_key(prediction_id: int, input_fingerprint: str, weights_sha256: str) -> str:
    """The identity of one stored prediction across installations (id alone repeats between databases)."""
    return f"{prediction_id}:{input_fingerprint}:{weights_sha256}"
