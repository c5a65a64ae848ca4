"""Root error, reason codes, and settings sources (defaults, TOML file, env)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmclinic.config import Settings
from mmclinic.errors import InputError, MmclinicError


def test_input_error_carries_reason_and_detail() -> None:
    err = InputError("dicom.truncated", "file ends inside PixelData")
    assert isinstance(err, MmclinicError)
    assert err.reason == "dicom.truncated"
    assert "file ends" in str(err)
    assert InputError().reason == "input.invalid"


def test_settings_from_toml_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "mmclinic.toml"
    cfg.write_text('device = "cpu"\n[pacs]\nport = 11999\nae_title = "FROMTOML"\n')
    monkeypatch.setenv("MMCLINIC_CONFIG", str(cfg))
    monkeypatch.setenv("MMCLINIC_PACS__AE_TITLE", "FROMENV")
    s = Settings()
    assert s.device == "cpu"
    assert s.pacs.port == 11999
    assert s.pacs.ae_title == "FROMENV"  # env wins over the file


def test_default_database_is_sqlite_under_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MMCLINIC_DATABASE_URL", raising=False)
    monkeypatch.setenv("MMCLINIC_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.effective_database_url == f"sqlite:///{tmp_path.as_posix()}/mmclinic.db"
