"""The bound on a peer's CERT payloads (docs/security.md, "Every bound"): more than
MAX_CHAIN_DEPTH + 1 (9) X.509 certificates are refused before any of them is parsed; other
encodings do not count."""

from __future__ import annotations

import pytest

from nattunnel.constants import CertEncoding, ExchangeType
from nattunnel.ike.certauth import peer_certificates
from nattunnel.ike.certs import MAX_CHAIN_DEPTH, CertError, CertProblem
from nattunnel.ike.message import Cert, Header, Message


def _message(certs: list[Cert]) -> Message:
    header = Header.make(ExchangeType.IKE_AUTH, b"\x01" * 8, b"\x02" * 8, initiator=True)
    return Message(header, certs, True)


def test_ten_certificates_are_refused_unparsed() -> None:
    assert MAX_CHAIN_DEPTH + 1 == 9
    junk = [Cert(CertEncoding.X509_SIGNATURE, b"not DER") for _ in range(10)]
    with pytest.raises(CertError) as e:
        peer_certificates(_message(junk))
    assert e.value.kind is CertProblem.DOES_NOT_CHAIN  # not NOT_A_CERTIFICATE: none parsed
    assert "10 certificates, more than 9" in str(e.value)


def test_nine_are_parsed_and_other_encodings_do_not_count() -> None:
    other = [Cert(CertEncoding.X509_SIGNATURE + 1, b"x") for _ in range(5)]
    nine = [Cert(CertEncoding.X509_SIGNATURE, b"not DER") for _ in range(9)]
    with pytest.raises(CertError) as e:
        peer_certificates(_message(other + nine))
    assert e.value.kind is CertProblem.NOT_A_CERTIFICATE
