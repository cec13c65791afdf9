#!/usr/bin/env python3
"""Stand-alone check of the known-answer vectors in this directory.

For every JSON file here:
  kind == "esp":      nonce = salt || iv; aad = spi || [esn_high] || seq;
                      esp_packet = spi || seq || iv || ciphertext || 16-byte ICV;
                      decrypting esp_packet[16:] must give
                      plaintext || padding || pad_length || next_header,
                      and re-encrypting must reproduce esp_packet.
                      (AES-GMAC entries in "other_vectors": tag over
                      aad = esp_packet[:-16] with empty plaintext.)
  kind == "raw_aead": nonce = salt || iv; AEAD(key, nonce, aad) applied to the
                      plaintext must give ciphertext_and_tag.
Prints one line per vector; exits 1 if any check fails.
Run: python3 tests/vectors/verify_vectors.py
"""
import glob
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
ICV_LEN = 16


def h(x):
    return bytes.fromhex(x) if x is not None else None


def aead_for(suite, key):
    if suite.startswith("aes-gcm") or suite.startswith("aes-gmac"):
        return AESGCM(key)
    if suite == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown suite {suite!r}")


def check_esp(v):
    key, salt, iv = h(v["key"]), h(v["salt"]), h(v["iv"])
    pkt = h(v["esp_packet"])
    spi, seq, hi = v["spi"], v["seq"], v["esn_high"]
    errs = []
    if len(salt) != 4 or len(iv) != 8:
        errs.append("salt/iv length")
    want_len = {"aes-gcm-128": 16, "aes-gcm-192": 24, "aes-gcm-256": 32,
                "aes-gmac-128": 16, "chacha20-poly1305": 32}[v["suite"]]
    if len(key) != want_len:
        errs.append("key length %d" % len(key))
    if pkt[:4] != struct.pack(">I", spi):
        errs.append("SPI in packet")
    if pkt[4:8] != struct.pack(">I", seq):
        errs.append("seq in packet")
    if pkt[8:16] != iv:
        errs.append("IV in packet")
    aad = struct.pack(">I", spi) + (struct.pack(">I", hi) if hi is not None else b"") + struct.pack(">I", seq)
    nonce = salt + iv
    aead = aead_for(v["suite"], key)
    if v["suite"].startswith("aes-gmac"):
        gaad = pkt[:-ICV_LEN]
        if v.get("aad") and h(v["aad"]) != gaad:
            errs.append("aad field")
        try:
            aead.decrypt(nonce, pkt[-ICV_LEN:], gaad)
        except InvalidTag:
            errs.append("GMAC tag")
        return errs
    if v.get("aad") is not None and h(v["aad"]) != aad:
        errs.append("aad field != spi||[esn_high]||seq")
    try:
        pt = aead.decrypt(nonce, pkt[16:], aad)
    except InvalidTag:
        return [*errs, "ICV does not verify"]
    expect = h(v["plaintext"]) + h(v["padding"]) + bytes([v["pad_length"], v["next_header"]])
    if len(h(v["padding"])) != v["pad_length"]:
        errs.append("padding length != pad_length")
    if pt != expect:
        errs.append("decrypted != plaintext||padding||pad_length||next_header")
    if pkt[:16] + aead.encrypt(nonce, expect, aad) != pkt:
        errs.append("re-encryption does not reproduce esp_packet")
    return errs


def check_raw(v):
    key, salt, iv = h(v["key"]), h(v["salt"]), h(v["iv"])
    errs = []
    if v.get("key_and_salt") and h(v["key_and_salt"]) != key + salt:
        errs.append("key_and_salt != key||salt")
    pt = h(v.get("plaintext_with_trailer") or v.get("plaintext"))
    aad = h(v["aad"])
    ct = h(v["ciphertext_and_tag"])
    aead = aead_for(v["suite"], key)
    if aead.encrypt(salt + iv, pt, aad) != ct:
        errs.append("ciphertext_and_tag mismatch")
    if v.get("assoc_linux") and h(v["assoc_linux"]) != aad + iv:
        errs.append("assoc_linux != aad||iv")
    if v.get("spi") is not None:
        hi = v.get("esn_high")
        exp_aad = struct.pack(">I", v["spi"]) + (struct.pack(">I", hi) if hi is not None else b"") + struct.pack(">I", v["seq"])
        if exp_aad != aad:
            errs.append("aad != spi||[esn_high]||seq")
    if v.get("esp_packet"):
        pkt = h(v["esp_packet"])
        if pkt != aad[:4] + struct.pack(">I", v["seq"]) + iv + ct:
            errs.append("esp_packet != spi||seq||iv||ciphertext_and_tag")
    return errs


def main():
    files = sorted(glob.glob(os.path.join(HERE, "*.json")))
    if not files:
        print("no vector files found")
        return 1
    total = failed = 0
    for path in files:
        with open(path) as fh:
            doc = json.load(fh)
        kind = doc.get("kind", "esp")
        for group in ("vectors", "other_vectors"):
            for v in doc.get(group, []):
                total += 1
                try:
                    errs = check_esp(v) if kind == "esp" else check_raw(v)
                except Exception as exc:
                    errs = [f"exception: {exc!r}"]
                status = "OK  " if not errs else "FAIL"
                extra = ""
                if kind == "esp":
                    extra = " esn_high={} pad_len={} nh={} mode={}".format(
                        v.get("esn_high"), v.get("pad_length"), v.get("next_header"), v.get("mode"))
                print("{} {}:{}[{}] {}{}{}".format(
                    status, os.path.basename(path), group, v["name"], v["suite"], extra,
                    (" -- " + "; ".join(errs)) if errs else ""))
                if errs:
                    failed += 1
    print("%d vectors checked, %d failed" % (total, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
