"""Columns that must agree exactly between batch runs."""

# Result columns that must agree exactly between runs (timings and device labels may differ).
COMPARE = ["case_id", "malignancy_risk", "tumor_probability", "findings", "modality_contributions", "input_fingerprint"]
