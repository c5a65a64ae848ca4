"""mmclinic task plugin ``tumor-risk``: lung tumor detection and malignancy risk."""

from mmclinic_tumor_risk.plugin import TumorRiskPlugin

__all__ = ["TumorRiskPlugin"]
