"""JSON Schemas of the application's outputs, kept as package data of ``lnmet``.

They are read with :mod:`importlib.resources`, so they travel with the package wherever it goes
(the staged application inside the MAP image included) instead of being looked up by a path
relative to the source tree.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

RESULTS_SCHEMA = "results.schema.json"
"""The JSON Schema (draft 2020-12) of results.json."""


def results_schema_text() -> str:
    """The text of ``lnmet/schemas/results.schema.json``."""
    return files(__name__).joinpath(RESULTS_SCHEMA).read_text(encoding="utf-8")


def load_results_schema() -> dict[str, Any]:
    """The JSON Schema of results.json, parsed."""
    return json.loads(results_schema_text())
