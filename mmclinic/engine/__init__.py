"""Inference: checkpoint loading + validation, device/precision, batched prediction with provenance."""

from mmclinic.engine.engine import BatchResult, InferenceEngine, PreparedCase

__all__ = ["BatchResult", "InferenceEngine", "PreparedCase"]
