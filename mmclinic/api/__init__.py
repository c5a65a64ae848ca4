"""Internal HTTP API (FastAPI): cases, jobs, worklist, predictions, reviews, admin, health."""

from mmclinic.api.app import check_bind, create_app

__all__ = ["check_bind", "create_app"]
