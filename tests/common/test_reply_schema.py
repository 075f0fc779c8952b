"""Reply bodies match the published JSON Schema, and the README lists every code."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from api.errors import CATALOG
from common.errors import DeadlineExceeded
from common.messages import result_body

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "common/schemas/reply.v1.schema.json").read_text())


def test_result_body_matches_the_schema() -> None:
    """A success body as the worker builds it validates against version 1."""
    body = result_body(
        request_id="r1",
        filename="page.png",
        elements=[
            {"label": "title", "bbox": [1, 2, 3, 4], "text": "A", "reading_order": 0}
        ],
        batch_id="b1",
        processing_time_s=0.5,
    )

    jsonschema.validate(json.loads(json.dumps(body)), SCHEMA)


def test_error_body_matches_the_schema() -> None:
    """An error body validates, and a body missing its code does not."""
    body = DeadlineExceeded("too late").body("r1")
    jsonschema.validate(body, SCHEMA)

    del body["error"]["code"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, SCHEMA)


def test_readme_documents_every_error_code() -> None:
    """Each code of the API's catalog appears in the README's error table."""
    readme = (ROOT / "README.md").read_text()
    missing = [code for code in CATALOG if f"`{code}`" not in readme]
    assert missing == []
