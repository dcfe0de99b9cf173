"""What a request's output must match (structured output), as plain hashable data.

The grammar itself is built by `engine/runner/structured_output.py`; this module imports nothing heavy, so
that SamplingParams can carry a GuidedDecoding and stay frozen and hashable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# kind -> what `spec` holds
KINDS = {
    "json": "a JSON schema, as JSON text",
    "json_object": "nothing: any JSON object",
    "regex": "a regular expression (Rust regex syntax) the whole output matches",
    "choice": "a JSON list of strings, one of which is the whole output",
    "grammar": "a Lark (or GBNF) grammar",
}


@dataclass(frozen=True)
class GuidedDecoding:
    """One grammar a request's every sample follows, token by token.

    `field` names the request field it came from (response_format, guided_json, ...): errors name it.
    """

    kind: str
    spec: str = ""
    field: str = field(default="response_format", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.field}: unknown structured output kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not isinstance(self.spec, str):
            raise ValueError(f"{self.field}: the grammar spec must be text")
        if self.kind != "json_object" and not self.spec:
            raise ValueError(f"{self.field}: {self.kind} needs {KINDS[self.kind]}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, field: str = "response_format") -> "GuidedDecoding":
        """From a schema (a dict, or its JSON text); ValueError for text that is not a JSON object."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{field}: the JSON schema is not valid JSON ({exc})") from None
        if not isinstance(schema, dict):
            raise ValueError(f"{field}: a JSON schema must be an object")
        return cls("json", json.dumps(schema, separators=(",", ":")), field)  # key order kept: it orders the output

    @classmethod
    def choice(cls, options: list[str], field: str = "guided_choice") -> "GuidedDecoding":
        if not options or not all(isinstance(o, str) and o for o in options):
            raise ValueError(f"{field}: a choice needs a non-empty list of non-empty strings")
        return cls("choice", json.dumps(list(options)), field)
