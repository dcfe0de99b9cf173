"""The request fields that ask for structured output, and the GuidedDecoding they make.

OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema": {...}})
on chat and completions, and vLLM's extra parameters: the older `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar` and the newer `structured_outputs` dict with the same four (as
`json`, `regex`, `choice`, `grammar`) and `json_object`. One source per request. What is not built
(other response_format types, vLLM's whitespace and backend options) is a 400 naming it, as every
unimplemented field is; an invalid schema or regex is refused by the engine, naming its field.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine.core.guided_decoding import GuidedDecoding

JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})
STRUCTURED_OUTPUTS_KEYS = ("json", "regex", "choice", "grammar", "json_object")


class StructuredOutputFields(BaseModel):
    """Mixed into the chat and completions request models (which are strict: no coercion)."""

    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None  # vLLM extension
    guided_regex: str | None = None  # vLLM extension
    guided_choice: list[str] | None = None  # vLLM extension
    guided_grammar: str | None = None  # vLLM extension (Lark or GBNF)
    structured_outputs: dict[str, Any] | None = None  # vLLM extension (0.10.2 on)

    def guided_decoding(self) -> GuidedDecoding | None:
        """The grammar these fields ask for, or None; ValueError naming the field at fault."""
        found = [g for g in (_response_format(self.response_format), self._guided(),
                             _structured(self.structured_outputs)) if g is not None]
        if len(found) > 1:
            raise ValueError(f"'{found[1].field}' and '{found[0].field}' both ask for structured output; give one")
        return found[0] if found else None

    def _guided(self) -> GuidedDecoding | None:
        names = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
        given = [(name, getattr(self, name)) for name in names if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"'{given[1][0]}' and '{given[0][0]}' both ask for structured output; give one")
        if not given:
            return None
        name, value = given[0]
        return _make(name.removeprefix("guided_"), value, name)


def _make(kind: str, value: Any, field: str) -> GuidedDecoding:
    if kind == "json":
        return GuidedDecoding.json_schema(value, field)
    if kind == "choice":
        if not isinstance(value, list):
            raise ValueError(f"'{field}' must be a list of strings")
        return GuidedDecoding.choice(value, field)
    if not isinstance(value, str):
        raise ValueError(f"'{field}' must be a string")
    return GuidedDecoding(kind, value, field)


def _response_format(value: dict[str, Any] | None) -> GuidedDecoding | None:
    if value is None:
        return None
    kind = value.get("type")
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    if extra := sorted(set(value) - allowed):
        raise ValueError(f"'response_format' has an unknown key {extra[0][:40]!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedDecoding("json_object", field="response_format")
    if kind != "json_schema":
        raise ValueError(f"'response_format' type must be text, json_object or json_schema, got {str(kind)[:40]!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ValueError("'response_format' json_schema needs a 'schema' object")
    if extra := sorted(set(spec) - JSON_SCHEMA_KEYS):
        raise ValueError(f"'response_format' json_schema has an unknown key {extra[0][:40]!r}")
    if spec.get("strict") not in (None, True, False):  # strict or not, the schema is enforced
        raise ValueError("'response_format' json_schema.strict must be a boolean")
    return GuidedDecoding.json_schema(spec["schema"], "response_format")


def _structured(value: dict[str, Any] | None) -> GuidedDecoding | None:
    if value is None:
        return None
    given = {k: v for k, v in value.items() if v is not None and v is not False}
    for key in given:
        if key not in STRUCTURED_OUTPUTS_KEYS:
            raise ValueError(f"'structured_outputs.{key[:40]}' is not supported by this server")
    if len(given) > 1:
        raise ValueError("'structured_outputs' asks for more than one of " + ", ".join(sorted(given)))
    if not given:
        return None
    kind, spec = next(iter(given.items()))
    field = f"structured_outputs.{kind}"
    if kind == "json_object":
        if spec is not True:
            raise ValueError(f"'{field}' must be a boolean")
        return GuidedDecoding("json_object", field=field)
    return _make(kind, spec, field)
