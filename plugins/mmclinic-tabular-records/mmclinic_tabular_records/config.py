"""Configuration schema of the tabular-records plugin (validated by the registry from ``plugins.tabular-records``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TabularConfig(BaseModel):
    """Options of the tabular-records plugin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Columns outside the task's schema are an error unless this is set (then listed as ignored).
    ignore_unknown_columns: bool = False
    # "reject": any invalid value rejects the record. "mark_missing": an invalid *optional* value is
    # treated as missing (the learned missing embedding) and listed under "rejected" in the summary;
    # invalid required values and unknown columns still reject the record.
    invalid_optional: Literal["reject", "mark_missing"] = "reject"
    # Normalised numeric values are clipped to +-clip so one far-out value cannot dominate its token.
    clip: float = Field(default=10.0, gt=0)
