"""The certificate fields of a ``[[peer]]`` (docs/certificates.md): certs, cacerts, crls,
rsa_pss, e-mail and DN identities, and each refusal naming the field and the file; the
recipes of docs/certificates.md with ``pki`` and ``openssl`` make files that load and verify."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from nattunnel.config import ConfigError, load_config
from nattunnel.constants import IdType
from nattunnel.ike.certs import load_certificates, load_trust
from nattunnel.keys import load_private_key
from nattunnel.lab.pki import Leaf, Pki, make_chain

GW_DN = "C=CH, O=strongSwan, CN=gw.example"


def pki(tmp: Path) -> Pki:
    return make_chain(tmp / "pki", intermediates=1, leaves={
        "gw": Leaf(GW_DN, dns=("gw.example",), ips=("198.18.0.2",)),
        "other": Leaf("C=CH, CN=other"),
    })


def config(tmp: Path, p: Pki, **over: str) -> Path:
    fields = {
        "auth": '"pubkey"', "local_id": f'"{GW_DN}"', "remote_id": '"carol@example.org"',
        "private_key": f'"{p.leaf["gw"].key_path}"',
        "certs": f'["{p.leaf["gw"].cert_path}", "{p.intermediates[0].cert_path}"]',
        "cacerts": f'"{p.root.cert_path}"', "crls": f'["{p.crl_path}"]',
        "allowed_ips": '["198.18.100.2/32"]',
    }
    fields.update(over)
    body = "\n".join(f"{k} = {v}" for k, v in fields.items() if v)
    path = tmp / "tunnel.toml"
    path.write_text('listen = ["0.0.0.0:4500"]\n[interface]\nkind = "inprocess"\n'
                    'addresses = ["198.18.100.1/24"]\n[[peer]]\nname = "carol"\n' + body + "\n")
    return path


def error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_certificate_peer_loads(tmp_path: Path) -> None:
    p = pki(tmp_path)
    cfg = load_config(config(tmp_path, p, rsa_pss="true"))
    ike = cfg.peers[0].ike
    assert ike is not None and ike.trust is not None
    assert [c.subject for c in ike.certs] == [p.leaf["gw"].cert.subject,
                                             p.intermediates[0].cert.subject]
    assert ike.trust.cas == (p.root.cert,) and len(ike.trust.crls) == 1
    assert isinstance(ike.private_key, ec.EllipticCurvePrivateKey)
    assert ike.local_id.id_type == IdType.DER_ASN1_DN and str(ike.local_id) == GW_DN
    assert ike.remote_id.id_type == IdType.RFC822_ADDR and ike.rsa_pss
    assert ike.peer_public_key is None
    assert "PRIVATE" not in repr(ike)


@pytest.mark.parametrize(("over", "field", "words"), [
    ({"local_id": '"vpn.example"'}, "peer[0].local_id", "is not in this host's certificate"),
    ({"certs": '"{other}"'}, "peer[0].certs", "is not the pair of private_key"),
    ({"cacerts": '"{leaf}"'}, "peer[0].cacerts", "is not a CA certificate"),
    ({"cacerts": '"{key}"'}, "peer[0].cacerts", "holds a private key, not a certificate"),
    ({"certs": '["{junk}"]'}, "peer[0].certs[0]", "is not a certificate"),
    ({"crls": '"{junk}"'}, "peer[0].crls", "is not a CRL"),
    ({"peer_public_key": '"{leaf}"'}, "peer[0].peer_public_key", "remove one of them"),
    ({"cacerts": "", "crls": '"{junk}"'}, "peer[0].crls", "needs cacerts"),
    ({"certs": "[]"}, "peer[0].certs", "is empty"),
    ({"local_id": '"C=CH, , CN=x"'}, "peer[0].local_id", "not a distinguished name"),
])
def test_refusals_name_the_field(tmp_path: Path, over: dict[str, str], field: str,
                                 words: str) -> None:
    p = pki(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    names = {"other": p.leaf["other"].cert_path, "leaf": p.leaf["gw"].cert_path,
             "key": p.leaf["gw"].key_path, "junk": junk}
    e = error(config(tmp_path, p, **{k: v.format(**names) for k, v in over.items()}))
    assert e.field.startswith(field) and words in str(e), str(e)


def test_local_id_defaults_to_the_certificate_subject(tmp_path: Path) -> None:
    p = pki(tmp_path)
    ike = load_config(config(tmp_path, p, local_id="")).peers[0].ike
    assert ike is not None and str(ike.local_id) == GW_DN
    assert ike.local_id.id_type == IdType.DER_ASN1_DN


def test_private_key_mode_is_checked(tmp_path: Path) -> None:
    p = pki(tmp_path)
    assert p.leaf["gw"].key_path is not None
    p.leaf["gw"].key_path.chmod(0o640)
    e = error(config(tmp_path, p))
    assert e.field == "peer[0].private_key" and "chmod 600" in str(e)


def _run(cmds: str, cwd: Path) -> None:
    subprocess.run(["bash", "-ec", cmds], cwd=cwd, check=True, capture_output=True)


def _verify_recipe(d: Path, leaf: str, intermediates: list[str]) -> None:
    trust = load_trust([d / "ca.pem"], [d / "int.crl"] if (d / "int.crl").exists() else [])
    chain = [c for n in intermediates for c in load_certificates(d / n)]
    cert = load_certificates(d / leaf)[0]
    assert trust.verify(cert, chain)[0] == cert
    load_private_key(d / leaf.replace(".pem", ".key"))


def _recipe(name: str) -> str:
    """A ```sh block of docs/certificates.md, after the heading that names ``name``."""
    text = (Path(__file__).parents[1] / "docs" / "certificates.md").read_text()
    part = text.split(name, 1)[1]
    return part.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(shutil.which("pki") is None, reason="pki missing (strongswan-pki)")
def test_the_pki_recipe_of_the_docs(tmp_path: Path) -> None:
    _run(_recipe("With strongSwan's `pki`"), tmp_path)
    _verify_recipe(tmp_path, "gw.pem", ["int.pem"])
    with pytest.raises(ValueError, match="revoked"):
        _verify_recipe(tmp_path, "carol.pem", ["int.pem"])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_the_openssl_recipe_of_the_docs(tmp_path: Path) -> None:
    _run(_recipe("### With OpenSSL"), tmp_path)
    _verify_recipe(tmp_path, "gw.pem", [])
