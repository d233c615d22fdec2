# Types for the part of flask-smorest that service.api uses (the package ships none); a name
# used from it later is added here. Its decorators register a view and hand it back
# unchanged, so they are typed as identities.
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, TypeVar

import flask
from apispec import APISpec
from marshmallow import Schema

_T = TypeVar("_T")
_Status = int | str | HTTPStatus
_SchemaArg = Schema | type[Schema] | str | dict[str, Any] | None

class Blueprint(flask.Blueprint):
    def __init__(self, name: str, import_name: str, *args: Any, url_prefix: str | None = ...,
                 description: str | None = ..., **kwargs: Any) -> None: ...
    def route(self, rule: str, *, parameters: list[Any] | None = ..., tags: list[str] | None = ...,
              **options: Any) -> Callable[[_T], _T]: ...
    @staticmethod
    def doc(**kwargs: Any) -> Callable[[_T], _T]: ...
    def arguments(self, schema: Schema | type[Schema], *, location: str = ..., content_type: str | None = ...,
                  required: bool = ..., description: str | None = ..., example: Mapping[str, Any] | None = ...,
                  examples: Mapping[str, Any] | None = ..., **kwargs: Any) -> Callable[[_T], _T]: ...
    def response(self, status_code: _Status, schema: _SchemaArg = ..., *, content_type: str | None = ...,
                 description: str | None = ..., example: Mapping[str, Any] | None = ...,
                 examples: Mapping[str, Any] | None = ..., headers: Mapping[str, Any] | None = ...
                 ) -> Callable[[_T], _T]: ...
    def alt_response(self, status_code: _Status, response: str | None = ..., *, schema: _SchemaArg = ...,
                     content_type: str | None = ..., description: str | None = ...,
                     example: Mapping[str, Any] | None = ..., examples: Mapping[str, Any] | None = ...,
                     headers: Mapping[str, Any] | None = ..., success: bool = ...) -> Callable[[_T], _T]: ...

class Api:
    ERROR_SCHEMA: type[Schema]
    spec: APISpec
    def __init__(self, app: flask.Flask | None = ..., *, spec_kwargs: Mapping[str, Any] | None = ...,
                 config_prefix: str = ...) -> None: ...
    def init_app(self, app: flask.Flask, *, spec_kwargs: Mapping[str, Any] | None = ...) -> None: ...
    def register_blueprint(self, blp: Blueprint, *, parameters: list[Any] | None = ..., **options: Any) -> None: ...
