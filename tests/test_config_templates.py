"""A gateway's template peer (docs/road-warrior.md, "One [[peer]] for every client"):
``remote_id = "%any"`` or a wildcard, with certificates and pools, ``max_clients``, and the
refusals, each naming the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nattunnel.config import ConfigError, load_config
from nattunnel.constants import IdType
from nattunnel.ike.config import Identity
from nattunnel.ike.templates import ANY_ID, IdentityPattern, parse_pattern
from nattunnel.lab.pki import Leaf, Pki, make_chain


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_chain(tmp_path_factory.mktemp("pki"), leaves={
        "gw": Leaf("C=CH, O=Lab, CN=gw", dns=("gw",))})


def config(tmp: Path, p: Pki, **over: str) -> Path:
    fields = {
        "auth": '"pubkey"', "local_id": '"gw"', "remote_id": '"%any"',
        "private_key": f'"{p.leaf["gw"].key_path}"', "certs": f'"{p.leaf["gw"].cert_path}"',
        "cacerts": f'"{p.root.cert_path}"', "pools": '"rw"',
        "local_ts": '["198.18.50.0/24"]',
    }
    fields.update(over)
    body = "\n".join(f"{k} = {v}" for k, v in fields.items() if v)
    psk = tmp / "k.psk"
    if not psk.exists():
        fd = os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"a secret of some length\n")
        os.close(fd)
    path = tmp / "gw.toml"
    path.write_text('listen = ["0.0.0.0:4500"]\n[interface]\nkind = "inprocess"\n'
                    'addresses = ["198.18.50.254/32"]\n[pools.rw]\n'
                    'addrs = "198.18.200.0/29"\n[[peer]]\nname = "rw"\n' + body + "\n")
    return path


def test_any_loads_as_a_template(tmp_path: Path, pki: Pki) -> None:
    cfg = load_config(config(tmp_path, pki, max_clients="3"))
    (peer,) = cfg.peers
    assert peer.ike is not None and peer.ike.remote_id is ANY_ID
    assert str(peer.ike.remote_id) == "%any" and peer.ike.max_clients == 3
    assert peer.allowed_ips == () and not peer.initiate
    ike = load_config(config(tmp_path, pki)).peers[0].ike
    assert ike is not None and ike.max_clients == 0


def test_wildcards_load(tmp_path: Path, pki: Pki) -> None:
    for text, kind in (("*@example.org", IdType.RFC822_ADDR), ("*.example.org", IdType.FQDN),
                       ("C=CH, O=Lab, CN=*", IdType.DER_ASN1_DN)):
        ike = load_config(config(tmp_path, pki, remote_id=f'"{text}"')).peers[0].ike
        assert ike is not None and isinstance(ike.remote_id, IdentityPattern)
        assert ike.remote_id.id_type == kind and str(ike.remote_id) == text


@pytest.mark.parametrize(("over", "field", "words"), [
    ({"auth": '"psk"', "private_key": "", "certs": "", "cacerts": "",
      "psk_file": '"k.psk"'}, "peer[0].remote_id", "every client shares the secret"),
    ({"cacerts": ""}, "peer[0].peer_public_key", "or cacerts"),
    ({"endpoint": '"198.18.0.9"'}, "peer[0].endpoint", "it only answers"),
    ({"initiate": "true"}, "peer[0].initiate", "needs an endpoint"),
    ({"pools": ""}, "peer[0].pools", "is needed with remote_id = '%any'"),
    ({"allowed_ips": '["198.18.100.0/24"]'}, "peer[0].allowed_ips", "its virtual IP"),
    ({"mediated_by": '"m"'}, "peer[0].mediated_by", "it only answers"),
    ({"max_clients": "0"}, "peer[0].max_clients", ""),
    ({"remote_id": '"%all"'}, "peer[0].remote_id", "the only %-identity is %any"),
    ({"remote_id": '"a*@example.org"'}, "peer[0].remote_id", "'*' goes at the start"),
    ({"remote_id": '"*@"'}, "peer[0].remote_id", "*@DOMAIN or *.DOMAIN"),
    ({"remote_id": '"C=CH, CN=a*"'}, "peer[0].remote_id", "a whole RDN value"),
    ({"local_id": '"%any"'}, "peer[0].local_id", "only remote_id may be"),
    ({"remote_id": '"client"', "max_clients": "2"}, "peer[0].max_clients",
     "is for a peer with remote_id = \"%any\""),
])
def test_refusals_name_the_field(tmp_path: Path, pki: Pki, over: dict[str, str], field: str,
                                 words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(config(tmp_path, pki, **over))
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_patterns_match() -> None:
    mail, fqdn = parse_pattern("*@example.org"), parse_pattern("*.example.org")
    dn = parse_pattern("C=CH, O=Lab, CN=*")
    assert mail and fqdn and dn and parse_pattern("client.example") is None
    assert mail.matches(Identity.parse("carol@Example.ORG"))
    assert not mail.matches(Identity.parse("carol@example.com"))
    assert not mail.matches(Identity.parse("example.org"))  # an FQDN, not an e-mail
    assert fqdn.matches(Identity.parse("a.example.org"))
    assert not fqdn.matches(Identity.parse("example.org"))
    assert dn.matches(Identity.parse("C=CH, O=Lab, CN=client-a"))
    assert not dn.matches(Identity.parse("C=CH, O=Other, CN=client-a"))
    assert not dn.matches(Identity.parse("C=CH, O=Lab, OU=x, CN=client-a"))
    assert ANY_ID.matches(Identity.parse("anything")) and Identity(0, b"%any") != ANY_ID
    assert dn.wildcards == 1 < ANY_ID.wildcards


def test_two_templates_need_different_patterns(tmp_path: Path, pki: Pki) -> None:
    one = config(tmp_path, pki).read_text()
    peer = "[[peer]]" + one.split("[[peer]]")[1]
    second = peer.replace('name = "rw"', 'name = "rw2"')
    path = tmp_path / "two.toml"
    path.write_text(one + second)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.field == "peer[1].remote_id" and "must be unique" in str(e.value)
    path.write_text(one + second.replace('"%any"', '"*.example.org"'))
    ids = [str(p.ike.remote_id) for p in load_config(path).peers if p.ike]
    assert ids == ["%any", "*.example.org"]
