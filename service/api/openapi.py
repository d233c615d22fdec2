"""apispec plugins that make the generated OpenAPI document say what the API does.

- Error responses are application/problem+json (flask-smorest documents them as application/json).
- Schemas can state object-level rules that no single field carries (exactly one data source):
  a marshmallow schema's ``openapi_rules()`` classmethod returns JSON Schema keywords to add.
- Path parameters carry the pattern of the ids they take, and names, paths, columns and ids
  say that they hold no control characters.
- Exclusive bounds (Range with min_inclusive=False) are stated, as OpenAPI 3.0's boolean flags.
"""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin
from marshmallow import fields, validate

from service.errors import PROBLEM_CONTENT_TYPE
from service.locations import DATASET_ID
from service.schemas import CONTROL_CHARACTERS, JOB_ID, PlainString

JSON = "application/json"


def _problem_content(response: dict[str, Any]) -> dict[str, Any] | None:
    """The response's content with its JSON body declared as problem+json; None when it has none."""
    content = response.get("content")
    if not isinstance(content, dict) or JSON not in content:
        return None
    return {(PROBLEM_CONTENT_TYPE if media == JSON else media): body for media, body in content.items()}


class ProblemResponsesPlugin(BasePlugin):
    """Declares every error response's body as application/problem+json."""

    def response_helper(self, response: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        # Component responses are flask-smorest's error responses (DEFAULT_ERROR, UNPROCESSABLE_ENTITY...).
        content = _problem_content(response)
        return {"content": content} if content is not None else None

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        for operation in (operations or {}).values():
            for status, response in operation.get("responses", {}).items():
                if not isinstance(response, dict) or not (str(status) == "default" or int(status) >= 400):
                    continue
                content = _problem_content(response)
                if content is not None:
                    response["content"] = content


class SchemaRulesPlugin(BasePlugin):
    """Adds the keywords of a schema's ``openapi_rules()`` to its component."""

    def schema_helper(self, name: str, definition: dict[str, Any], schema: Any = None,
                      **kwargs: Any) -> dict[str, Any] | None:
        schema_class = schema if isinstance(schema, type) else type(schema)
        rules = getattr(schema_class, "openapi_rules", None)
        return rules() if callable(rules) else None


NO_CONTROL_CHARACTERS_PATTERN = f"^[^{CONTROL_CHARACTERS.pattern[1:-1]}]*$"


def plain_string_pattern(converter: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """A name, path, column or id holds no control characters (unless a stricter pattern says more)."""
    if not isinstance(field, PlainString) or any(isinstance(v, validate.Regexp) for v in field.validators):
        return {}
    return {"pattern": NO_CONTROL_CHARACTERS_PATTERN}


# What each path parameter of this API takes; any other value is a 404 (or, with a control
# character, a 422).
PATH_PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "job_id": {"type": "string", "pattern": JOB_ID},
    "dataset_id": {"type": "string", "pattern": DATASET_ID.pattern},
    "name": {"type": "string", "minLength": 1, "pattern": NO_CONTROL_CHARACTERS_PATTERN},
}


class PathParametersPlugin(BasePlugin):
    """Documents the pattern of every id in a URL path."""

    def path_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                    parameters: list[Any] | None = None, **kwargs: Any) -> None:
        for parameter in parameters or []:
            if isinstance(parameter, dict) and parameter.get("in") == "path" \
                    and parameter.get("name") in PATH_PARAMETER_SCHEMAS:
                parameter["schema"] = dict(PATH_PARAMETER_SCHEMAS[parameter["name"]])


def exclusive_bounds(converter: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """exclusiveMinimum/exclusiveMaximum for the Range validators that exclude their bounds."""
    flags: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                flags["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                flags["exclusiveMaximum"] = True
    return flags
