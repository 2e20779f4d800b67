"""Request bodies checked against the Pantry's OpenAPI document (the copy in
udx/data, identical to spec/): the subset of OpenAPI 3.0 schemas that document
uses ($ref, allOf, oneOf, nullable, type, enum, format, minimum, properties,
required, additionalProperties, items). The simulator answers what fails with
400, as the real pantry's deserializer does."""

from __future__ import annotations

import json
import uuid
from functools import cache
from importlib import resources
from typing import Any

SPEC_FILE = "crucible-pantry-2.0.0.json"
_UINT_MAX = {"uint8": 2**8 - 1, "uint16": 2**16 - 1, "uint32": 2**32 - 1, "uint64": 2**64 - 1}
_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


@cache
def spec() -> dict[str, Any]:
    text = resources.files("udx.data").joinpath(SPEC_FILE).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def request_schema(path_template: str, method: str) -> dict[str, Any] | None:
    """The JSON request body schema of an operation, or None when it takes none."""
    op = spec()["paths"].get(path_template, {}).get(method.lower(), {})
    body = op.get("requestBody")
    if not body:
        return None
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec()
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def check(schema: dict[str, Any], value: Any, where: str = "body", depth: int = 0) -> str | None:
    """The first way `value` breaks `schema`, as a message naming where; None if it fits."""
    if depth > 64:
        return f"{where}: nested too deeply"
    schema = _resolve(schema)
    if value is None:
        if schema.get("nullable"):
            return None
        if "type" in schema or "oneOf" in schema or "allOf" in schema:
            return f"{where}: invalid type: null"
        return None
    for part in schema.get("allOf", ()):
        problem = check(part, value, where, depth + 1)
        if problem:
            return problem
    if "oneOf" in schema:
        problems = [check(alt, value, where, depth + 1) for alt in schema["oneOf"]]
        fits = [p for p in problems if p is None]
        if len(fits) != 1:
            if len(fits) > 1:
                return f"{where}: matches more than one variant"
            # The variant its "type" names, when it names one, explains best.
            tagged = [
                p
                for alt, p in zip(schema["oneOf"], problems, strict=True)
                if isinstance(value, dict)
                and value.get("type") in _resolve(alt).get("properties", {})
                .get("type", {})
                .get("enum", ())
            ]
            return tagged[0] if tagged else f"{where}: matches no variant"
    kind = schema.get("type")
    got = _kind(value)
    if kind == "integer":
        if got != "integer":
            return f"{where}: invalid type: {got}, expected an integer"
    elif kind == "number":
        if got not in ("integer", "number"):
            return f"{where}: invalid type: {got}, expected a number"
    elif kind is not None and not isinstance(value, _JSON_TYPES[kind]):
        return f"{where}: invalid type: {got}, expected {kind}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: unknown variant {value!r}, expected one of {schema['enum']}"
    fmt = schema.get("format")
    if got == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: {value} is below {schema['minimum']}"
        if fmt in _UINT_MAX and value > _UINT_MAX[fmt]:
            return f"{where}: {value} does not fit {fmt}"
    if fmt == "uuid" and got == "string":
        try:
            uuid.UUID(value)
        except ValueError:
            return f"{where}: {value!r} is not a UUID"
    if got == "object":
        for key in schema.get("required", ()):
            if key not in value:
                return f"{where}: missing field `{key}`"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                problem = check(props[key], item, f"{where}.{key}", depth + 1)
            elif extra is False:
                problem = f"{where}: unknown field `{key}`"
            elif isinstance(extra, dict):
                problem = check(extra, item, f"{where}.{key}", depth + 1)
            else:
                problem = None
            if problem:
                return problem
    if got == "array" and "items" in schema:
        for i, item in enumerate(value):
            problem = check(schema["items"], item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
    return None


@cache
def _templates() -> list[tuple[list[str], str]]:
    return [(t.strip("/").split("/"), t) for t in spec()["paths"]]


def path_template(path: str) -> str | None:
    """The spec's path template a concrete path matches ({id} is one segment)."""
    parts = path.strip("/").split("/")
    for segments, template in _templates():
        if len(segments) == len(parts) and all(
            s == p or (s.startswith("{") and s.endswith("}") and p)
            for s, p in zip(segments, parts, strict=True)
        ):
            return template
    return None


def allowed_methods(path: str) -> list[str] | None:
    """The methods the spec declares for a concrete path; None when it declares none."""
    template = path_template(path)
    if template is None:
        return None
    return sorted(m.upper() for m in spec()["paths"][template])
