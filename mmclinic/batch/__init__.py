"""Offline cohort scoring: a manifest in, a results table out; resumable, exactly-once, local or on Ray."""

from mmclinic.batch.runner import ScoreOptions, ScoreSummary, score_cohort

__all__ = ["ScoreOptions", "ScoreSummary", "score_cohort"]
