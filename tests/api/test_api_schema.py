"""Schemathesis against the app's own OpenAPI schema: no 5xx, responses conform to the declared schema."""

from __future__ import annotations

import os
from pathlib import Path

import schemathesis
from api_testkit import build_api  # the same app builder as every other API test
from hypothesis import HealthCheck, given, settings

from mmclinic.store.testing import make_ct_dicom

EXAMPLES_PER_OPERATION = int(os.environ.get("MMCLINIC_SCHEMATHESIS_EXAMPLES", "25"))
# "Schema-valid request accepted" cannot hold for rules JSON Schema does not express (a case needs at least
# one modality, a file must be DICOM, a cursor must come from the same query); those answer 400 with a reason.
# Every other check runs: no 5xx, declared status codes, content types, headers and response schemas.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


def test_api_conforms_to_its_schema(tmp_path: Path) -> None:
    gen = build_api("sqlite", tmp_path)
    api = next(gen)
    try:
        # Seed real rows so that generated ids sometimes hit existing resources.
        api.predicted("int1", note="seeded")
        blob = make_ct_dicom("1.2.3", "1.2.3.1", "1.2.3.1.1")
        api.client.post(
            "/api/v1/cases/upload", files=[("files", ("a.dcm", blob))], data={"patient_id": "p"}, headers=api.h("int1")
        )
        schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
        headers = api.h("admin")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 14
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

            check()
    finally:
        gen.close()
