"""Opaque cursors for the list endpoints: a kind prefix and the last row's sequence number."""

from __future__ import annotations

import base64
import binascii
import re

from service.errors import ValidationFailed

MAX_SEQ = 2**63 - 1  # the largest BIGINT: no row has a higher sequence number


def encode_cursor(kind: str, seq: int) -> str:
    """An opaque cursor of list ``kind`` for the page that continues below ``seq``."""
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int:
    """The seq inside a cursor of list ``kind`` this API issued; a 422 problem for anything else."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii")).decode()
        prefix, _, number = raw.partition(":")
        # [0-9], not str.isdigit(): that accepts other scripts' digits, which int() then reads.
        if prefix != kind or not re.fullmatch(r"[0-9]{1,19}", number) or int(number) > MAX_SEQ:
            raise ValueError(raw)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        errors = {"cursor": ["Not a cursor returned by this API as `next`."]}
        raise ValidationFailed("cursor: Not a cursor returned by this API.", errors=errors) from exc
