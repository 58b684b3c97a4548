"""The client IP behind proxies: forwarded headers count only from trusted peers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voxgate.clientip import client_ip, parse_networks, resolve

TRUSTED = parse_networks(["10.0.0.0/8", "2001:db8::/32"])


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    spoofed = headers(x_forwarded_for="1.2.3.4", forwarded="for=5.6.7.8")
    assert resolve("203.0.113.9", spoofed, ()) == "203.0.113.9"


def test_an_untrusted_peer_cannot_name_another_address() -> None:
    spoofed = headers(x_forwarded_for="1.2.3.4")
    assert resolve("203.0.113.9", spoofed, TRUSTED) == "203.0.113.9"


def test_a_trusted_proxy_names_the_client() -> None:
    assert resolve("10.1.2.3", headers(x_forwarded_for="198.51.100.7"), TRUSTED) == "198.51.100.7"


def test_the_rightmost_untrusted_hop_wins_over_what_the_client_prepended() -> None:
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real peer.
    chain = headers(x_forwarded_for="1.2.3.4, 198.51.100.7, 10.9.9.9")
    assert resolve("10.1.2.3", chain, TRUSTED) == "198.51.100.7"


def test_several_header_lines_make_one_chain() -> None:
    chain = [(b"x-forwarded-for", b"1.2.3.4"), (b"X-Forwarded-For", b"198.51.100.7")]
    assert resolve("10.1.2.3", chain, TRUSTED) == "198.51.100.7"


def test_forwarded_header_with_ports_and_ipv6() -> None:
    value = 'for=1.2.3.4;proto=https, for="[2001:db8:cafe::17]:4711", for=198.51.100.7:8080'
    assert resolve("10.1.2.3", headers(forwarded=value), TRUSTED) == "198.51.100.7"
    value = 'for=192.0.2.43, for="[2001:db8:cafe::17]:4711"'
    assert resolve("10.1.2.3", headers(forwarded=value), TRUSTED) == "192.0.2.43"
    v6 = parse_networks(["2001:db8:1::/48"])
    assert resolve("2001:db8:1::5", headers(forwarded='for="[2001:db8:cafe::17]"'), v6) == (
        "2001:db8:cafe::17"
    )


def test_forwarded_wins_over_x_forwarded_for() -> None:
    both = headers(forwarded="for=198.51.100.7", x_forwarded_for="1.2.3.4")
    assert resolve("10.1.2.3", both, TRUSTED) == "198.51.100.7"


@pytest.mark.parametrize("junk", ["unknown", "_hidden", "not-an-ip", "", "999.1.1.1"])
def test_a_hop_that_is_not_an_address_stops_at_the_last_real_one(junk: str) -> None:
    chain = headers(x_forwarded_for=f"1.2.3.4, {junk}, 10.5.5.5")
    assert resolve("10.1.2.3", chain, TRUSTED) == "10.5.5.5"


def test_only_proxies_in_the_chain_gives_the_oldest() -> None:
    assert resolve("10.1.2.3", headers(x_forwarded_for="10.4.4.4, 10.5.5.5"), TRUSTED) == (
        "10.4.4.4"
    )


def test_the_scope_caches_the_answer() -> None:
    scope: dict[str, object] = {
        "client": ("10.1.2.3", 5555),
        "headers": headers(x_forwarded_for="198.51.100.7"),
    }
    assert client_ip(scope, TRUSTED) == "198.51.100.7"
    scope["headers"] = []
    assert client_ip(scope, TRUSTED) == "198.51.100.7"


def test_no_peer_is_unknown() -> None:
    assert client_ip({"headers": []}, TRUSTED) == "unknown"


def test_bad_cidr_is_refused() -> None:
    with pytest.raises(ValueError, match="does not appear"):
        parse_networks(["10.0.0.0/33"])


def test_the_compose_deployment_counts_clients_not_its_load_balancer() -> None:
    deploy = Path(__file__).parents[2] / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    nginx = (deploy / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    for name, service in compose["services"].items():
        if name.startswith("voxgate"):
            trusted = parse_networks(service["environment"]["VOXGATE_TRUSTED_PROXIES"].split(","))
            # A load balancer on Docker's default bridge network is trusted; the client
            # address it appends is the one that counts.
            chain = headers(x_forwarded_for="203.0.113.50")
            assert resolve("172.18.0.5", chain, trusted) == "203.0.113.50", name
