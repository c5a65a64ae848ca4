"""Settings: defaults, overridden by an optional ``mmclinic.toml`` and then by ``MMCLINIC_*`` env vars."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ApiSettings(BaseModel):
    """Internal HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Authentication may be disabled only for loopback development servers.
    auth_enabled: bool = True
    max_upload_mb: int = 512


class PacsDestination(BaseModel):
    """A DICOM peer that receives SR/SEG results."""

    ae_title: str
    host: str
    port: int


class PacsPeer(BaseModel):
    """A calling AE allowed to send studies, with the host it must connect from."""

    ae_title: str
    host: str = "127.0.0.1"
    site: str = "default"  # the site its studies (and the cases made from them) belong to


class PacsSettings(BaseModel):
    """DICOM listener and result export."""

    ae_title: str = "MMCLINIC"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 8
    # Largest PDU we accept. Senders cut each instance into PDUs of at most this size, and each PDU
    # costs the listener a receive-and-decode round; 1 MiB lets dcmtk use its largest (128 KiB).
    max_pdu_size: int = 1 << 20
    allowed_peers: list[PacsPeer] = Field(default_factory=list)
    destinations: list[PacsDestination] = Field(default_factory=list)
    study_quiet_seconds: float = 30.0
    min_free_disk_mb: int = 512
    max_queued_jobs: int = 10000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    write_seg: bool = False
    # Outbox (results to destinations): spool folder (default data_dir/pacs/outbox), retry back-off and cap.
    outbox_dir: Path | None = None
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    poll_seconds: float = 2.0  # how often the listener checks quiet studies, finished jobs and the outbox


class BatchSettings(BaseModel):
    """Offline cohort scoring."""

    workers: int = 2
    batch_size: int = 8


class Settings(BaseSettings):
    """Root settings. Env vars use the prefix ``MMCLINIC_`` and ``__`` for nesting."""

    model_config = SettingsConfigDict(
        env_prefix="MMCLINIC_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Path("var")
    database_url: str = ""  # empty: SQLite file under data_dir
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_level: str = "INFO"
    log_json: bool = False
    # Task plugin name or a training-run folder holding a checkpoint.
    model: str = "tumor-risk"
    # Per-plugin configuration, keyed by plugin name; validated by the plugin's config schema.
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("MMCLINIC_CONFIG", "mmclinic.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mmclinic.db').as_posix()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
