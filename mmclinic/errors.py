"""The one exception hierarchy of mmclinic; translated to HTTP / DICOM / exit codes only at the edges."""

from __future__ import annotations


class MmclinicError(Exception):
    """Root of every error mmclinic raises on purpose.

    ``reason`` is a stable, machine-readable code (dotted, lower-case) that edges translate
    into HTTP problem types, DICOM failure statuses and CLI exit messages.
    """

    default_reason = "mmclinic.error"

    def __init__(self, reason: str | None = None, detail: str = "") -> None:
        self.reason = reason or self.default_reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class InputError(MmclinicError):
    """Bad input from outside (a DICOM file, a note, a record, a manifest row, a request)."""

    default_reason = "input.invalid"


class ConfigError(MmclinicError):
    """Invalid or inconsistent configuration."""

    default_reason = "config.invalid"


class PluginError(MmclinicError):
    """A plugin failed to import, failed validation, or is missing."""

    default_reason = "plugin.invalid"


class ModelError(MmclinicError):
    """A checkpoint that cannot be used (corrupt, or its plugins/schema do not match)."""

    default_reason = "model.invalid"


class NotFoundError(MmclinicError):
    """A requested resource does not exist (or is not visible to the caller)."""

    default_reason = "not_found"


class ConflictError(MmclinicError):
    """A write that conflicts with existing state (duplicate, changed bytes, stale lease)."""

    default_reason = "conflict"


class AuthError(MmclinicError):
    """Missing or invalid credentials."""

    default_reason = "auth.unauthenticated"


class ForbiddenError(MmclinicError):
    """Valid credentials, but the action or resource is not allowed for this caller."""

    default_reason = "auth.forbidden"


class ResourceExhaustedError(MmclinicError):
    """Disk, queue or another configured limit is exhausted (DICOM 0xA700)."""

    default_reason = "resource.exhausted"
