"""``GET /api/v1/predictions/{id}/sr``: the prediction's DICOM SR (TID 1500) as a Part 10 file."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from mmclinic.api.deps import Caller, caller
from mmclinic.api.problems import responses
from mmclinic.api.schemas import Id
from mmclinic.store import predictions as pred_store

router = APIRouter(prefix="/api/v1", tags=["predictions"])


@router.get(
    "/predictions/{prediction_id}/sr",
    response_class=Response,
    responses={200: {"content": {"application/dicom": {}}}, **responses(400, 401, 404, 422)},
    summary="DICOM Structured Report of a prediction",
)
def prediction_sr(prediction_id: Id, who: Caller = Depends(caller)) -> Response:
    """The SR built from the stored prediction; the same SOP Instance UID as the one sent to the PACS."""
    from mmclinic.pacs.export import build_objects

    with who.audited("prediction.sr.read", f"prediction/{prediction_id}") as tx:
        row = pred_store.get_visible(tx.session, prediction_id, tx.site_filter())
        sr = build_objects(tx.session, row, with_seg=False)[0]
    return Response(
        content=sr.data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{sr.name}.dcm"'},
    )
