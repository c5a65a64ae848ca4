"""Training, calibration, evaluation and reporting (``metrics`` is torch-free for the batch scorer)."""
