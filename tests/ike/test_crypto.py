"""IKEv2 crypto building blocks; the end-to-end check is interop with strongSwan."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.ike import crypto as c


def test_prf_hmac_sha256_rfc4231_case1():
    prf = c.Prf(c.PRF_HMAC_SHA2_256)
    assert prf(b"\x0b" * 20, b"Hi There").hex() == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    assert prf.key_len == 32
    assert c.Prf(c.PRF_HMAC_SHA2_512).key_len == 64
    with pytest.raises(ValueError):
        c.Prf(99)


def test_prf_plus_is_section_2_13():
    prf = c.Prf(c.PRF_HMAC_SHA2_384)
    k, s = b"k" * 48, b"seed"
    t1 = hmac.digest(k, s + b"\x01", "sha384")
    t2 = hmac.digest(k, t1 + s + b"\x02", "sha384")
    assert prf.plus(k, s, 60) == (t1 + t2)[:60]
    assert len(prf.plus(k, s, 255 * 48)) == 255 * 48
    with pytest.raises(ValueError):
        prf.plus(k, s, 255 * 48 + 1)


@pytest.mark.parametrize("group", [c.DH_CURVE25519, c.DH_ECP_256])
def test_key_exchange_agrees_and_checks_input(group):
    a, b = c.KeyExchange(group), c.KeyExchange(group)
    assert len(a.public) == c.KeyExchange.public_length(group)
    assert a.shared(b.public) == b.shared(a.public)
    assert len(a.shared(b.public)) == 32
    with pytest.raises(ValueError):
        a.shared(b.public[:-1])
    with pytest.raises(ValueError):
        a.shared(bytes(len(b.public)))  # all zero: degenerate / not on the curve


def test_ike_key_derivation_layout():
    prf = c.Prf(c.PRF_HMAC_SHA2_256)
    alg = c.encr_alg(c.ENCR_AES_GCM_16, 256)
    ni, nr, spi_i, spi_r = b"i" * 32, b"r" * 32, b"I" * 8, b"R" * 8
    seed = c.skeyseed_initial(prf, ni, nr, b"g" * 32)
    assert seed == hmac.digest(ni + nr, b"g" * 32, "sha256")
    keys = c.derive_ike_keys(prf, alg, seed, ni, nr, spi_i, spi_r)
    stream = prf.plus(seed, ni + nr + spi_i + spi_r, 32 + 36 + 36 + 32 + 32)
    assert keys.sk_d + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr == stream
    i2r, r2i = c.child_keymat(prf, keys.sk_d, ni, nr, 36)
    assert i2r + r2i == prf.plus(keys.sk_d, ni + nr, 72)
    with_pfs = c.child_keymat(prf, keys.sk_d, ni, nr, 36, g_ir=b"x" * 32)
    assert with_pfs[0] == prf.plus(keys.sk_d, b"x" * 32 + ni + nr, 72)[:36]


@pytest.mark.parametrize(("tid", "bits"), [(c.ENCR_AES_GCM_16, 128),
                                           (c.ENCR_AES_GCM_16, 256),
                                           (c.ENCR_CHACHA20_POLY1305, None)])
def test_sk_cipher_round_trip_unique_ivs_and_tamper(tid, bits):
    alg = c.encr_alg(tid, bits)
    km = bytes(range(alg.keymat_len))
    tx, rx = c.AeadSk(alg, km), c.AeadSk(alg, km)
    aad = b"header"
    a, b = tx.seal(aad, b"payloads"), tx.seal(aad, b"payloads")
    assert a[:8] != b[:8]  # IVs never repeat
    assert rx.open(aad, a) == b"payloads"
    bad = bytearray(a)
    bad[-1] ^= 1
    with pytest.raises(ValueError, match="ICV"):
        rx.open(aad, bytes(bad))
    with pytest.raises(ValueError):
        rx.open(b"other header", a)
    with pytest.raises(ValueError):
        c.encr_alg(c.ENCR_AES_GCM_16, 192)


def test_psk_and_ed25519_auth():
    prf = c.Prf(c.PRF_HMAC_SHA2_256)
    octets = c.signed_octets(b"msg1", b"nonce", prf, b"skp" * 8, b"\x02\x00\x00\x00host")
    assert octets == b"msg1nonce" + prf(b"skp" * 8, b"\x02\x00\x00\x00host")
    assert c.psk_auth(prf, b"secret", octets) == prf(prf(b"secret", b"Key Pad for IKEv2"),
                                                     octets)
    key = ed25519.Ed25519PrivateKey.generate()
    data = c.ed25519_auth(key, octets)
    assert data[:8] == bytes.fromhex("07300506032b6570") and len(data) == 8 + 64
    assert c.ed25519_verify(key.public_key(), data, octets)
    assert not c.ed25519_verify(key.public_key(), data, octets + b"x")
    assert not c.ed25519_verify(key.public_key(), b"\x00" + data[1:], octets)
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    assert not c.ed25519_verify(other, data, octets)
