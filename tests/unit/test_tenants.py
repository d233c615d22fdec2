"""The tenants file: what it defines, the errors that stop the service at start, and token lookup."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from service.config import ConfigError, Settings
from service.tenants import Quotas, Role, Tenant, find_tenant, token_hash

ALPHA_TOKEN = "alpha-token-0123456789abcdef"
BETA_TOKEN = "beta-token-0123456789abcdef"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def with_hash(text: str) -> str:
    """``text`` with HASH replaced by a well-formed sha256 hex digest."""
    return text.replace("HASH", "a" * 64)


def settings_with(tmp_path: Path, text: str, *, name: str = "tenants.yaml", **env: str) -> Settings:
    path = tmp_path / name
    path.write_text(text)
    return Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_TENANTS_FILE": str(path), **env})


def test_a_yaml_file_defines_tenants_roles_and_quotas_over_the_defaults(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, f"""
alpha:
  tokens: ["{sha(ALPHA_TOKEN).upper()}"]
  quotas: {{active_jobs: 3, requests_per_minute: 60}}
ops:
  tokens: [{sha(BETA_TOKEN)}]
  roles: [admin]
""", FITJOBS_TENANT_MAX_GPUS="2", FITJOBS_TENANT_MAX_UPLOAD_BYTES="1000")
    alpha, ops = settings.tenants
    assert alpha.name == "alpha" and alpha.roles == {Role.READ, Role.SUBMIT}
    assert alpha.token_hashes == (sha(ALPHA_TOKEN),), "hashes are kept in lowercase hex"
    assert alpha.quotas == Quotas(active_jobs=3, gpus=2, upload_bytes=1000, requests_per_minute=60)
    assert ops.roles == {Role.ADMIN} and ops.sees_all and ops.may(Role.SUBMIT) and ops.may(Role.READ)
    assert ops.quotas == settings.default_quotas == Quotas(gpus=2, upload_bytes=1000)


def test_a_json_file_is_read_as_json(tmp_path: Path) -> None:
    document = {"alpha": {"tokens": [sha(ALPHA_TOKEN)], "roles": ["read"], "quotas": {"gpus": 4}}}
    (alpha,) = settings_with(tmp_path, json.dumps(document), name="tenants.json").tenants
    assert alpha.roles == {Role.READ} and not alpha.may(Role.SUBMIT) and alpha.quotas.gpus == 4


def test_api_tokens_are_the_default_tenant_with_every_role_beside_the_file(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, f"alpha: {{tokens: [{sha(ALPHA_TOKEN)}]}}\n",
                             FITJOBS_API_TOKENS=BETA_TOKEN, FITJOBS_TENANT_MAX_ACTIVE_JOBS="5")
    assert [t.name for t in settings.tenants] == ["alpha", "default"]
    default = settings.tenants[1]
    assert default.roles == set(Role) and default.token_hashes == (sha(BETA_TOKEN),)
    assert default.quotas.active_jobs == 5
    only_tokens = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_TOKENS": ALPHA_TOKEN})
    assert [t.name for t in only_tokens.tenants] == ["default"]
    anonymous = Settings.from_env({"FITJOBS_HOME": str(tmp_path)})
    assert anonymous.tenants == () and anonymous.anonymous_tenant.name == "default"
    assert not anonymous.anonymous_tenant.sees_all


@pytest.mark.parametrize(("text", "named"), [
    ("[]", "non-empty mapping of tenant names"),
    ("{}", "non-empty mapping of tenant names"),
    ("alpha: [1, 2]", "tenant 'alpha' must be a mapping"),
    (with_hash("Alpha!: {tokens: [HASH]}"), "tenant name 'Alpha!'"),
    ("alpha: {tokens: []}", "alpha.tokens must be a non-empty list"),
    ("alpha: {tokens: [abc]}", "alpha.tokens holds an entry that is not a sha256 hash"),
    (with_hash("alpha: {tokens: [HASH], colour: red}"), "unknown key(s) colour"),
    (with_hash("alpha: {tokens: [HASH], roles: [write]}"), "alpha.roles has the unknown role 'write'"),
    (with_hash("alpha: {tokens: [HASH], roles: []}"), "alpha.roles must be a non-empty list"),
    (with_hash("alpha: {tokens: [HASH], quotas: {jobs: 3}}"), "unknown quota(s) jobs"),
    (with_hash("alpha: {tokens: [HASH], quotas: {gpus: -1}}"), "alpha.quotas.gpus must be a whole number"),
    (with_hash("alpha: {tokens: [HASH], quotas: {gpus: true}}"), "alpha.quotas.gpus must be a whole number"),
    (with_hash("alpha: {tokens: [HASH], quotas: {gpus: 1.5}}"), "alpha.quotas.gpus must be a whole number"),
    ("alpha: {tokens: [" + "a" * 64 + "]}\nbeta: {tokens: [" + "A" * 64 + "]}",  # the same hash, in capitals
     "listed for both tenant 'alpha' and 'beta'"),
    ("alpha: {tokens: [", "is not valid YAML"),
])
def test_a_bad_tenants_file_stops_the_service_naming_the_problem(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(tmp_path, text)
    assert str(raised.value).startswith("FITJOBS_TENANTS_FILE=")
    assert named in str(raised.value)


def test_a_token_pasted_instead_of_its_hash_is_refused_without_being_repeated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a sha256 hash") as raised:
        settings_with(tmp_path, f"alpha: {{tokens: [{ALPHA_TOKEN}]}}\n")
    assert ALPHA_TOKEN not in str(raised.value)


def test_a_missing_file_invalid_json_and_clashes_with_api_tokens_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"FITJOBS_TENANTS_FILE": str(tmp_path / "absent.yaml")})
    with pytest.raises(ConfigError, match="is not valid JSON"):
        settings_with(tmp_path, "{alpha:", name="tenants.json")
    with pytest.raises(ConfigError, match="FITJOBS_API_TOKENS makes tenant 'default'"):
        settings_with(tmp_path, f"default: {{tokens: [{sha(ALPHA_TOKEN)}]}}\n", FITJOBS_API_TOKENS=BETA_TOKEN)
    with pytest.raises(ConfigError, match="also listed in FITJOBS_TENANTS_FILE"):
        settings_with(tmp_path, f"alpha: {{tokens: [{sha(ALPHA_TOKEN)}]}}\n", FITJOBS_API_TOKENS=ALPHA_TOKEN)
    with pytest.raises(ConfigError, match="FITJOBS_ALLOW_ANONYMOUS"):
        Settings.from_env({"FITJOBS_ALLOW_ANONYMOUS": "maybe"})


def test_a_token_finds_its_tenant_by_comparing_every_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    quotas = Quotas()
    tenants = (Tenant("alpha", frozenset({Role.READ}), quotas, (sha("x" * 20), sha(ALPHA_TOKEN))),
               Tenant("beta", frozenset({Role.READ}), quotas, (sha(BETA_TOKEN),)))
    compared = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert find_tenant(tenants, ALPHA_TOKEN) is tenants[0]
    assert len(compared) == 3, "no early exit: the time taken does not tell which hash matched"
    assert find_tenant(tenants, BETA_TOKEN) is tenants[1]
    assert find_tenant(tenants, "not-a-known-token-000") is None
    assert token_hash(ALPHA_TOKEN) == sha(ALPHA_TOKEN)
