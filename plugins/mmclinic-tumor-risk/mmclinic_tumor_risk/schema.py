"""The tumor-risk task's tabular schema: record columns, canonical units and plausible ranges."""

from __future__ import annotations

from mmclinic.plugin_api import FeatureSpec

# Ranges are physiological plausibility limits (values outside are data errors, not rare patients);
# units are the canonical ones the tabular plugin converts ``<name>_unit`` columns to. Lab values that
# are right-skewed and act multiplicatively (CEA, CRP, WBC) are given to the model on a log scale.
TABULAR_SCHEMA: tuple[FeatureSpec, ...] = (
    FeatureSpec("age", "numeric", unit="years", min=0, max=120, required=True, description="age at the CT"),
    FeatureSpec("sex", "categorical", categories=("M", "F"), description="administrative sex"),
    FeatureSpec(
        "smoking_status", "categorical", categories=("never", "former", "current"), description="smoking history"
    ),
    FeatureSpec("pack_years", "numeric", unit="pack-years", min=0, max=300, description="cumulative smoking"),
    FeatureSpec("years_since_quit", "numeric", unit="years", min=0, max=100, description="former smokers only"),
    FeatureSpec("family_history", "boolean", description="first-degree relative with lung cancer"),
    FeatureSpec("copd", "boolean", description="chronic obstructive pulmonary disease"),
    FeatureSpec("cea", "numeric", unit="ng/mL", min=0, max=10000, description="carcinoembryonic antigen", scale="log"),
    FeatureSpec("crp", "numeric", unit="mg/L", min=0, max=1000, description="C-reactive protein", scale="log"),
    FeatureSpec("hemoglobin", "numeric", unit="g/dL", min=2, max=25, description="blood hemoglobin"),
    FeatureSpec("wbc", "numeric", unit="10^9/L", min=0, max=500, description="white blood cell count", scale="log"),
)
