"""Tenants: who a bearer token belongs to, what that tenant may do, and the quotas it has.

A tenants file (FITJOBS_TENANTS_FILE, YAML or JSON) maps tenant names to the sha256 hashes
of their tokens, their roles and their quotas. Only hashes are kept: a caller's token is
hashed and compared, in constant time, with every known hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

# The tenant of anonymous callers and of FITJOBS_API_TOKENS, and of rows older than tenants.
DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
TOKEN_HASH = re.compile(r"[0-9a-f]{64}")
TENANT_KEYS = frozenset({"tokens", "roles", "quotas"})


class Role(StrEnum):
    """What a tenant's tokens may do: read its objects, submit (and cancel, delete, upload), or
    read every tenant's objects (admin)."""

    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


# Roles of a tenant whose entry in the tenants file names none.
DEFAULT_ROLES = frozenset({Role.READ, Role.SUBMIT})


@dataclass(frozen=True)
class Quotas:
    """Per-tenant limits; 0 means no limit."""

    # Queued plus running jobs.
    active_jobs: int = 0
    # GPUs requested by queued plus running jobs (a job without a request counts as one).
    gpus: int = 0
    # Bytes of uploaded datasets stored.
    upload_bytes: int = 0
    # Requests to /v1 per minute, over every API replica.
    requests_per_minute: int = 0


QUOTA_NAMES = tuple(quota.name for quota in fields(Quotas))


class QuotaReached(RuntimeError):
    """A tenant's quota does not allow this request; ``used`` is what it already has."""

    def __init__(self, quota: str, limit: int, used: int) -> None:
        super().__init__(f"quota {quota} of {limit} reached ({used} in use)")
        self.quota = quota
        self.limit = limit
        self.used = used


@dataclass(frozen=True)
class Tenant:
    """One tenant: its name, roles, quotas and the sha256 hashes of its tokens."""

    name: str
    roles: frozenset[Role]
    quotas: Quotas
    token_hashes: tuple[str, ...] = ()

    def may(self, role: Role) -> bool:
        """Whether this tenant has ``role``; admin has every role."""
        return role in self.roles or Role.ADMIN in self.roles

    @property
    def sees_all(self) -> bool:
        """Whether this tenant reads every tenant's jobs and datasets."""
        return Role.ADMIN in self.roles


def token_hash(token: str) -> str:
    """The sha256 hex digest a tenants file stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def find_tenant(tenants: Iterable[Tenant], token: str) -> Tenant | None:
    """The tenant ``token`` belongs to, or None; every hash is compared, in constant time."""
    digest = token_hash(token).encode()
    found = None
    for tenant in tenants:
        for known in tenant.token_hashes:
            # No early exit: how long this takes does not depend on which hash matched.
            if hmac.compare_digest(digest, known.encode()) and found is None:
                found = tenant
    return found


def _quota_value(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number of at least 0 (0: no limit), got {value!r}")
    return value


def _parse_quotas(document: object, defaults: Quotas, where: str) -> Quotas:
    if document is None:
        return defaults
    if not isinstance(document, Mapping):
        raise ValueError(f"{where} must be a mapping of quota names to numbers")
    unknown = sorted(str(key) for key in document if key not in QUOTA_NAMES)
    if unknown:
        raise ValueError(f"{where} has unknown quota(s) {', '.join(unknown)}; known: {', '.join(QUOTA_NAMES)}")
    return replace(defaults, **{name: _quota_value(value, f"{where}.{name}") for name, value in document.items()})


def _parse_roles(document: object, where: str) -> frozenset[Role]:
    if document is None:
        return DEFAULT_ROLES
    known = ", ".join(role.value for role in Role)
    if not isinstance(document, list) or not document:
        raise ValueError(f"{where} must be a non-empty list of roles ({known})")
    roles = set()
    for role in document:
        if role not in {r.value for r in Role}:
            raise ValueError(f"{where} has the unknown role {role!r}; known: {known}")
        roles.add(Role(role))
    return frozenset(roles)


def _parse_tokens(document: object, where: str) -> tuple[str, ...]:
    if not isinstance(document, list) or not document:
        raise ValueError(f"{where} must be a non-empty list of sha256 hashes of tokens")
    hashes = []
    for item in document:
        text = item.strip().lower() if isinstance(item, str) else ""
        if not TOKEN_HASH.fullmatch(text):
            # The value itself is not quoted: a token pasted by mistake must not reach the logs.
            raise ValueError(f"{where} holds an entry that is not a sha256 hash (64 hex digits); store "
                             "`printf %s \"$TOKEN\" | sha256sum`, never the token itself")
        hashes.append(text)
    return tuple(hashes)


def parse_tenants(document: object, defaults: Quotas) -> tuple[Tenant, ...]:
    """The tenants a tenants-file document defines; ValueError names the first problem."""
    if not isinstance(document, Mapping) or not document:
        raise ValueError("the file must hold a non-empty mapping of tenant names to "
                         "{tokens: [...], roles: [...], quotas: {...}}")
    tenants = []
    owners: dict[str, str] = {}
    for name, entry in document.items():
        if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
            raise ValueError(f"tenant name {name!r} must be 1 to 64 lowercase letters, digits, '_', '.' or '-', "
                             "starting with a letter or digit")
        if not isinstance(entry, Mapping):
            raise ValueError(f"tenant {name!r} must be a mapping with tokens, roles and quotas")
        unknown = sorted(str(key) for key in entry if key not in TENANT_KEYS)
        if unknown:
            raise ValueError(f"tenant {name!r} has unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(TENANT_KEYS))}")
        hashes = _parse_tokens(entry.get("tokens"), f"{name}.tokens")
        for digest in hashes:
            if digest in owners:
                raise ValueError(f"one token hash is listed for both tenant {owners[digest]!r} and {name!r}")
            owners[digest] = name
        tenants.append(Tenant(name=name, roles=_parse_roles(entry.get("roles"), f"{name}.roles"),
                              quotas=_parse_quotas(entry.get("quotas"), defaults, f"{name}.quotas"),
                              token_hashes=hashes))
    return tuple(tenants)


def read_tenants_file(path: Path, defaults: Quotas) -> tuple[Tenant, ...]:
    """Read and check a tenants file (JSON when it ends in .json, YAML otherwise)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from exc
    try:
        document: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                         f"{str(exc).splitlines()[0]}") from exc
    return parse_tenants(document, defaults)
