"""Which webhook URLs and addresses are allowed: public ones only, unless a setting allows more."""

from __future__ import annotations

import ipaddress

import pytest

from service.config import ConfigError, Settings
from service.webhooks.destinations import DestinationPolicy, DestinationRefused, parse_networks

NON_PUBLIC = ["127.0.0.1", "127.8.9.10", "169.254.169.254", "10.0.0.5", "172.16.3.4", "192.168.1.1", "100.64.0.1",
              "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
              "::ffff:169.254.169.254", "::"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_loopback_private_link_local_and_other_non_public_addresses_are_refused(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(DestinationRefused, match="non-public"):
        DestinationPolicy().check(f"https://{host}/hook")


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    destination, addresses = DestinationPolicy().check(f"https://{host}:8443/hook?x=1")
    assert addresses == [ipaddress.ip_address(address)]
    assert (destination.port, destination.target, destination.host_header) == (8443, "/hook?x=1", f"{host}:8443")


def test_a_host_name_is_judged_by_every_address_it_resolves_to() -> None:
    answers = {"mixed.example": ["93.184.215.14", "10.1.2.3"], "public.example": ["93.184.215.14"]}
    policy = DestinationPolicy(resolver=lambda host, port: answers[host])
    with pytest.raises(DestinationRefused, match="10.1.2.3"):
        policy.check("https://mixed.example/")
    assert policy.check("https://public.example/")[1] == [ipaddress.ip_address("93.184.215.14")]


def test_localhost_resolves_to_loopback_and_is_refused_with_the_system_resolver() -> None:
    with pytest.raises(DestinationRefused, match="non-public"):
        DestinationPolicy().check("http://localhost:9/hook")


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(DestinationRefused, match="does not resolve"):
        DestinationPolicy().check("https://no-such-host.invalid/")


def test_allowed_networks_let_their_addresses_through_and_no_others() -> None:
    policy = DestinationPolicy(allowed_networks=parse_networks(["127.0.0.1/32", "fd00::/8"]))
    policy.check("http://127.0.0.1:8080/")
    policy.check("http://[fd00::5]/")
    for refused in ("http://127.0.0.2/", "http://169.254.169.254/", "http://[::1]/"):
        with pytest.raises(DestinationRefused):
            policy.check(refused)


def test_allowed_hosts_are_patterns_the_url_host_must_match() -> None:
    policy = DestinationPolicy(allowed_hosts=("hooks.example.com", "*.partner.example"),
                               resolver=lambda host, port: ["93.184.215.14"])
    policy.check("https://hooks.example.com/")
    policy.check("https://HOOKS.EXAMPLE.COM./")  # host names are case-insensitive; a final dot names the same
    policy.check("https://a.b.partner.example/")
    for refused in ("https://example.com/", "https://partner.example/", "https://hooks.example.com.evil.example/"):
        with pytest.raises(DestinationRefused, match="FITJOBS_WEBHOOK_ALLOWED_HOSTS"):
            policy.check(refused)


@pytest.mark.parametrize("url,reason", [
    ("ftp://example.com/", "http"), ("file:///etc/passwd", "http"), ("gopher://127.0.0.1:6379/", "http"),
    ("https://user:pass@example.com/", "credentials"), ("https:///path", "no host"),
    ("https://example.com:99999/", "port"), ("https://exa mple.com/", "spaces"),
    ("https://bücher.example/", "ASCII"), ("https://example.com/" + "a" * 2100, "longer"),
])
def test_urls_of_another_form_are_refused_before_any_lookup(url: str, reason: str) -> None:
    def no_lookup(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    with pytest.raises(DestinationRefused, match=reason):
        DestinationPolicy(resolver=no_lookup).check(url)


def test_settings_parse_hosts_and_networks_and_refuse_bad_ones() -> None:
    settings = Settings.from_env({"FITJOBS_WEBHOOK_ALLOWED_HOSTS": " Hooks.Example.com , *.corp ",
                                  "FITJOBS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32,10.0.0.0/8"})
    assert settings.webhook_policy.allowed_hosts == ("hooks.example.com", "*.corp")
    assert ipaddress.ip_address("10.9.9.9") in settings.webhook_policy.allowed_networks[1]
    with pytest.raises(ConfigError, match="FITJOBS_WEBHOOK_ALLOWED_NETWORKS"):
        Settings.from_env({"FITJOBS_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="FITJOBS_WEBHOOK_ALLOWED_HOSTS"):
        Settings.from_env({"FITJOBS_WEBHOOK_ALLOWED_HOSTS": "hooks/example"})
