"""What every request passes before a view runs: a request id, and limits on what a body or URL may hold.

- Each request gets an id: the caller's `X-Request-ID` when it is a sane token, else a new one.
  Every response carries it back, and every problem+json body names it as `request_id`, so an
  error the caller reports can be found in the logs.
- A JSON body (not an uploaded file: see takes_raw_body) may nest at most MAX_JSON_DEPTH
  arrays and objects, and hold no integer of more than MAX_INTEGER_DIGITS digits, no NaN or
  Infinity: checked on the raw text, before Python parses it (deep nesting exhausts the
  parser's recursion, and int() of a long digit string costs quadratic time and fails past
  4,300 digits).
- Values taken from the URL path (ids, artifact names) hold no control characters.
"""

from __future__ import annotations

import re
import uuid
from itertools import accumulate

from flask import Flask, Response, current_app, g, has_request_context, request

from service.errors import BadRequest, ValidationFailed

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is echoed only when it looks like one: no spaces, quotes or control characters.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

MAX_JSON_DEPTH = 64
# The widest integer any field accepts is 2**63 - 1: 19 digits.
MAX_INTEGER_DIGITS = 19
# Every check below runs at C speed (regular expressions, map and accumulate), so that a 32 MB
# body of numbers or brackets costs about a second, not a Python loop over millions of tokens.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
# +1 for an opening bracket, -1 for a closing one, by byte value: the running sum is the depth.
BRACKET_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))
NON_FINITE = re.compile(r"NaN|Infinity")
LONG_DIGITS = re.compile(rf"(?<![\d.])\d{{{MAX_INTEGER_DIGITS + 1}}}")
# Exponents of 289 and more: with at most 19 digits before the point, 288 keeps every number
# below 1e307 and so finite (Python parses 1e400 as inf, which JSON cannot hold).
LARGE_EXPONENT = re.compile(r"[eE]\+?0*(?:[1-9]\d{3,}|289|29\d|[3-9]\d\d)(?!\d)")
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def request_id() -> str:
    """The id of the request being served (assigned on first use)."""
    if not has_request_context():
        return ""
    if "request_id" not in g:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return str(g.request_id)


def check_json_text(text: str) -> None:
    """Refuse a JSON document nested deeper than MAX_JSON_DEPTH or holding numbers no field accepts."""
    structure = JSON_STRING.sub("", text)  # what is inside strings is text, not structure
    if found := NON_FINITE.search(structure):
        raise BadRequest(f"The JSON body holds {found.group()}, which is not a JSON number.")
    if LONG_DIGITS.search(structure):
        raise ValidationFailed(
            f"The JSON body holds a number of more than {MAX_INTEGER_DIGITS} digits; no field accepts one.",
            errors={"body": [f"A number has more than {MAX_INTEGER_DIGITS} digits."]})
    if found := LARGE_EXPONENT.search(structure):
        raise ValidationFailed(f"The JSON body holds a number with the exponent {found.group()[:20]}; "
                               "no field accepts one beyond 1e288.",
                               errors={"body": ["A number's exponent is above 288."]})
    brackets = NOT_A_BRACKET.sub("", structure).encode("ascii")
    # map, accumulate and max all run in C (the steps are cached small ints): no Python loop.
    if max(accumulate(map(BRACKET_STEP.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH:
        raise BadRequest(f"The JSON body nests arrays and objects more than {MAX_JSON_DEPTH} deep.")


def takes_raw_body() -> bool:
    """Whether this request's view reads its body as a file (an upload), not as a JSON document."""
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(getattr(view, "view_class", view), "RAW_BODY", False))


def check_request() -> None:
    """Refuse control characters in URL path values, and JSON bodies past the limits above."""
    bad = sorted(name for name, value in (request.view_args or {}).items()
                 if isinstance(value, str) and CONTROL_CHARACTER.search(value))
    if bad:
        errors = {name: ["Must not contain NUL or other control characters."] for name in bad}
        raise ValidationFailed(f"{', '.join(bad)}: Must not contain NUL or other control characters.",
                               errors=errors)
    if request.method in ("POST", "PUT", "PATCH") and request.is_json and not takes_raw_body():
        body = request.get_data(cache=True)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("The request body is not valid UTF-8 JSON.") from exc
        check_json_text(text)


def assign_request_id() -> None:
    """Fix the request's id before anything can fail, so that every problem body names it."""
    request_id()


def add_request_id(response: Response) -> Response:
    """Every response names the request it answers."""
    response.headers[REQUEST_ID_HEADER] = request_id()
    return response


def install_edge(app: Flask) -> None:
    """Check every request as above (after authentication), and tag every response with its request id."""
    app.before_request_funcs.setdefault(None, []).insert(0, assign_request_id)
    app.before_request(check_request)
    app.after_request(add_request_id)
