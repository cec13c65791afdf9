"""An IKE peer's settings: ``auth``, identities, proposals, traffic selectors, credentials.

``IkeFields`` reads the IKEv2 fields of a ``[[peer]]`` into an ``ike.config.IkeConfig`` (its repr
never shows the pre-shared key or the private key) and, once the whole file is checked, the
peer's PSK or Ed25519 key files into it. A field of the other kind of peer is an error naming
that field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..addr import HostPort, Network
from ..ike.config import DEFAULT_FRAGMENT_SIZE, Identity, IkeConfig
from ..ike.grammar import parse_esp_proposal, parse_ike_proposal
from ..ike.proposals import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS
from ..keys import KeyFileError, load_ed25519_private, load_ed25519_public, load_psk, public_key_b64
from .certfields import SUBJECT_ID, cert_credentials, pubkey_files
from .children import ChildrenFields
from .fields import show
from .model import (
    DEFAULT_DPD_INTERVAL,
    DEFAULT_IKE_REKEY_TIME,
    DEFAULT_REKEY_TIME,
    IkeAuth,
    InterfaceConfig,
    IPInterface,
)
from .roadwarrior import RoadWarriorFields

_T = TypeVar("_T")

#: fields of a manual peer only (static SAs)
MANUAL_KEYS: Final = ("spi_in", "spi_out", "key_in", "key_out", "suite", "esn")
#: fields of an IKE peer only
IKE_KEYS: Final = (
    "fragmentation", "fragment_size",
    "auth", "local_id", "remote_id", "psk_file", "private_key", "peer_public_key", "initiate",
    "certs", "cacerts", "crls", "rsa_pss",
    "encap", "dpd_interval", "ike_proposals", "esp_proposals", "local_ts", "rekey_time",
    "rekey_bytes", "rekey_packets", "ike_rekey_time", "mobike", "vips", "pools", "dns_file",
    "children",
)
#: IKE fragmentation (RFC 7383): the smallest and largest ``fragment_size``, octets of the IP
#: datagram (128 leaves 15 octets of payloads in an IPv6 fragment on port 4500: for tests;
#: RFC 7383 section 2.5.1 recommends 576 for IPv4 and 1280 for IPv6)
FRAGMENT_SIZE_MIN: Final = 128
FRAGMENT_SIZE_MAX: Final = 65535
#: for auth = "psk" only / for auth = "pubkey" only
PSK_KEYS: Final = ("psk_file",)
PUBKEY_KEYS: Final = ("private_key", "peer_public_key", "certs", "cacerts", "crls", "rsa_pss")
IKE_INSTEAD: Final = {"suite": "esp_proposals", "esn": "esp_proposals (e.g. \"aes256gcm16-esn\")"}


def local_networks(addresses: tuple[IPInterface, ...]) -> tuple[Network, ...]:
    """The default local traffic selectors: each inner address as a /32 or /128."""
    return tuple(ipaddress.ip_network(a.ip) for a in addresses)


@dataclass
class IkeFiles:
    """Credentials of one IKE peer, read after the whole file is checked."""

    auth: IkeAuth
    psk_file: Path | None = None
    private_key: Path | None = None
    peer_public_key: Path | None = None
    #: certificates (docs/certificates.md): ours and its intermediates, the CAs we trust for
    #: the peer, CRLs; each (field path, file)
    certs: tuple[tuple[str, Path], ...] = ()
    cacerts: tuple[tuple[str, Path], ...] = ()
    crls: tuple[tuple[str, Path], ...] = ()
    rsa_pss: bool = False



def _key_name(key: object) -> str:
    """Ed25519, ECDSA or RSA, for the repr."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    return "RSA" if isinstance(key, rsa.RSAPrivateKey) else "Ed25519"


class _IkeConfig(IkeConfig):
    """An ``ike.config.IkeConfig`` whose repr names the authentication but never holds the
    pre-shared key (the dataclass repr of IkeConfig would print it)."""

    def __repr__(self) -> str:
        if self.auth == IkeAuth.PSK:
            secret = f"psk=<{len(self.psk)} octets>"
        else:
            mine = (f"<{_key_name(self.private_key)} private key>"
                    if self.private_key is not None else "None")
            theirs = (repr(public_key_b64(self.peer_public_key))
                      if self.peer_public_key is not None else "None")
            secret = f"private_key={mine}, peer_public_key={theirs}"
        return (f"IkeConfig(name={self.name!r}, local_id={str(self.local_id)!r}, "
                f"remote_id={str(self.remote_id)!r}, auth={self.auth!r}, {secret}, "
                f"local_ts={tuple(str(n) for n in self.local_ts)!r}, "
                f"remote_ts={tuple(str(n) for n in self.remote_ts)!r}, "
                f"ike_proposals={tuple(p.name for p in self.ike_proposals)!r}, "
                f"esp_proposals={tuple(p.name for p in self.esp_proposals)!r}, "
                f"force_encap={self.force_encap}, dpd_interval={self.dpd_interval})")


class IkeFields(RoadWarriorFields, ChildrenFields):
    """The IKEv2 fields of a peer; ``ike_files`` keeps each IKE peer's credential files (by
    peer index) until ``ike_credentials`` reads them."""

    def __init__(self, path: Path | None, base_dir: Path) -> None:
        super().__init__(path, base_dir)
        #: peer index -> credential files of an IKE peer (read by load_keys)
        self.ike_files: dict[int, IkeFiles] = {}

    def auth(self, t: dict[str, Any], pre: str) -> IkeAuth | None:
        """The peer's kind: None for manual SAs, else its IKE authentication. A field of the
        other kind is an error naming it."""
        # the first offending field in file order
        if "auth" not in t:
            for key in t:
                if key in IKE_KEYS:
                    raise self.err(pre + key, "is an IKEv2 field, but this peer has no auth "
                                              "(manual SAs); add auth = \"psk\" or "
                                              "\"pubkey\" for an IKE-managed peer, or remove "
                                              f"{key}")
            return None
        text = self.get(t, "auth", pre, str, "\"psk\" or \"pubkey\"")
        try:
            auth = IkeAuth(text)
        except ValueError:
            raise self.err(pre + "auth", f"{show(text)} is not an IKE authentication method; "
                                         f"expected \"psk\" or \"pubkey\" (Ed25519)") from None
        for key in t:
            if key in MANUAL_KEYS:
                instead = IKE_INSTEAD.get(key)
                hint = (f"; an IKE peer sets {instead}" if instead else
                        "; IKEv2 negotiates SPIs and keys")
                raise self.err(pre + key, f"is a manual-SA field, but this peer has auth = "
                                          f"\"{auth.value}\" (IKE-managed){hint}: remove "
                                          f"{key}, or remove auth for a manual peer")
        other = PUBKEY_KEYS if auth is IkeAuth.PSK else PSK_KEYS
        for key in other:
            if key in t:
                want = "pubkey" if auth is IkeAuth.PSK else "psk"
                raise self.err(pre + key, f"is for auth = \"{want}\", but this peer has "
                                          f"auth = \"{auth.value}\"")
        return auth

    def ike(self, t: dict[str, Any], pre: str, name: str, auth: IkeAuth,
            endpoint: HostPort | None, remote_ts: tuple[Network, ...],
            interface: InterfaceConfig, index: int) -> tuple[IkeConfig, bool]:
        """The IkeConfig of an IKE peer (credentials still empty: load_keys reads them) and
        whether to initiate."""
        # with certs and no local_id: the certificate's subject (as swanctl's local.id)
        local_id = (self.identity(t, "local_id", pre) if "local_id" in t or "certs" not in t
                    else SUBJECT_ID)
        remote_id = self.identity(t, "remote_id", pre)

        files = IkeFiles(auth)
        if auth is IkeAuth.PSK:
            files.psk_file = self.file_path(
                t, "psk_file", pre, "the path of a pre-shared key file made by `nattunnel "
                                    "keygen --type psk PATH`")
        else:
            pubkey_files(self, t, pre, files)
        self.ike_files[index] = files

        initiate = self.get(t, "initiate", pre, bool, "true or false", endpoint is not None)
        if initiate and endpoint is None and "mediated_by" not in t:
            raise self.err(pre + "initiate", "true needs an endpoint to send IKE_SA_INIT to; "
                                             "add endpoint, or set initiate = false to wait "
                                             "for the peer")
        encap = self.get(t, "encap", pre, str, "\"auto\" or \"force\"", "auto")
        if encap not in ("auto", "force"):
            raise self.err(pre + "encap", f"{show(encap)} is not an encapsulation mode; "
                                          f"expected \"auto\" (UDP encapsulation when a NAT "
                                          f"is detected) or \"force\" (always)")
        # MOBIKE (RFC 4555): on unless false, as strongSwan's mobike = yes
        mobike = self.get(t, "mobike", pre, bool, "true or false", True)
        dpd = self.seconds(t, "dpd_interval", pre, DEFAULT_DPD_INTERVAL, zero=True)
        rekey = self.seconds(t, "rekey_time", pre, DEFAULT_REKEY_TIME, zero=True)
        # the IKE SA's: strongSwan's connection-level rekey_time (the child's is rekey_time)
        ike_rekey = self.seconds(t, "ike_rekey_time", pre, DEFAULT_IKE_REKEY_TIME, zero=True)
        rekey_bytes = self.get_int(t, "rekey_bytes", pre, 0, 2**62, 0)
        rekey_packets = self.get_int(t, "rekey_packets", pre, 0, 2**32 - 1, 0)

        ike_proposals = self.proposals(t, "ike_proposals", pre, parse_ike_proposal,
                                       DEFAULT_IKE_PROPOSALS,
                                       "an array of IKE proposals, e.g. "
                                       "[\"aes256gcm16-prfsha256-x25519\"]")
        esp_proposals = self.proposals(t, "esp_proposals", pre, parse_esp_proposal,
                                       DEFAULT_ESP_PROPOSALS,
                                       "an array of ESP proposals, e.g. [\"aes256gcm16\"]")

        vips, dns_file, pools = self.road_warrior(t, pre)
        if "local_ts" in t:
            expected = "an array of local inner prefixes, e.g. [\"198.18.100.1/32\"]"
            local: list[Network] = []
            for f, s in self.get_str_list(t, "local_ts", pre, expected):
                local.append(self.network(f, s))
            if not local:
                raise self.err(pre + "local_ts", "is empty; list the local inner prefixes "
                                                 "this peer may reach, or leave local_ts out "
                                                 "for the interface addresses")
            local_ts = tuple(local)
        elif vips:
            local_ts = self.vip_local_ts(vips)
        else:
            local_ts = local_networks(interface.addresses)
            if not local_ts:
                raise self.err(pre + "local_ts", "missing: the interface has no addresses to "
                                                 "derive the local traffic selectors from; "
                                                 "give local_ts, e.g. "
                                                 "[\"198.18.100.1/32\"]")
        children = self.children(t, pre, local_ts, remote_ts, vips=bool(vips))
        return self.with_fragmentation(t, pre, _IkeConfig(
            name=name, local_id=local_id, remote_id=remote_id, auth=auth.value,
            local_ts=local_ts, remote_ts=remote_ts, ike_proposals=ike_proposals,
            esp_proposals=esp_proposals, force_encap=encap == "force", dpd_interval=dpd,
            child_rekey_time=rekey, rekey_bytes=rekey_bytes, rekey_packets=rekey_packets,
            ike_rekey_time=ike_rekey, mobike=mobike, vips=vips, dns_file=dns_file, pools=pools,
            children=children,
        )), initiate

    def with_fragmentation(self, t: dict[str, Any], pre: str, ike: IkeConfig) -> IkeConfig:
        """``ike`` with the peer's IKE fragmentation settings (RFC 7383): ``fragmentation``
        (on unless false) and ``fragment_size``."""
        fragmentation = self.get(t, "fragmentation", pre, bool, "true or false", True)
        fragment_size = self.get_int(t, "fragment_size", pre, FRAGMENT_SIZE_MIN,
                                     FRAGMENT_SIZE_MAX, DEFAULT_FRAGMENT_SIZE)
        return replace(ike, fragmentation=fragmentation, fragment_size=fragment_size)

    def identity(self, t: dict[str, Any], key: str, pre: str) -> Identity:
        """An IKE identity as strongSwan writes it: an IP address, ``fqdn:NAME``, a bare name
        (FQDN), ``@NAME`` (FQDN), ``keyid:HEX`` / ``@#HEX`` / ``keyid:TEXT``."""
        field = pre + key
        text = self.get(t, key, pre, str, "an identity such as \"hosta\", "
                                          "\"fqdn:hosta.example\", \"198.18.0.1\" or "
                                          "\"keyid:0011...\"")
        s = text.strip()
        if s.startswith("@#"):
            s = "keyid:#" + s[2:]
        elif s.startswith("@") and not s.startswith("@@"):  # @@NAME: e-mail (Identity.parse)
            s = "fqdn:" + s[1:]
        prefix, colon, rest = s.partition(":")
        problem = None
        if not s:
            problem = "is empty"
        elif text.strip() != text:
            problem = "starts or ends with whitespace"
        elif colon and prefix.lower() in ("ipv4", "ipv6"):
            try:
                ip = ipaddress.ip_address(rest)
            except ValueError:
                problem = f"{show(rest)} is not an IP address"
            else:
                if ip.version != int(prefix[-1]):
                    problem = (f"{show(rest)} is not an {prefix[:2].upper()}{prefix[2:]} "
                               f"address")
                s = rest
        elif colon and prefix in ("fqdn", "keyid", "email", "rfc822", "userfqdn", "asn1dn"):
            if not rest:
                problem = f"has nothing after {prefix}:"
        elif colon and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", prefix):
            try:
                ipaddress.ip_address(s)
            except ValueError:
                problem = (f"identity type {prefix + ':'!r} is not supported; use an IP "
                           f"address, fqdn:NAME, email:NAME@DOMAIN, a distinguished name "
                           f"(C=CH, O=..., CN=...) or keyid:HEX")
        if problem is None:
            try:  # the core forms: non-ASCII FQDNs, bad keyid:# hex, lengths, zones
                return Identity.parse(s)
            except ValueError as e:
                problem = str(e)
        raise self.err(field, f"{show(text)}: {problem}")

    def proposals(self, t: dict[str, Any], key: str, pre: str,
                  parse: Callable[[str], _T], default: tuple[_T, ...], expected: str
                  ) -> tuple[_T, ...]:
        if key not in t:
            return default
        out: list[_T] = []
        where: dict[_T, str] = {}
        for f, text in self.get_str_list(t, key, pre, expected):
            try:
                proposal = parse(text)
            except ValueError as e:
                raise self.err(f, f"{show(text)}: {e}") from None
            if proposal in where:
                raise self.err(f, f"{show(text)} is the same proposal as {where[proposal]}")
            where[proposal] = f
            out.append(proposal)
        if not out:
            raise self.err(pre + key, f"is empty; expected {expected}, or leave {key} out "
                                      f"for the defaults")
        return tuple(out)

    def ike_credentials(self, index: int, ike: IkeConfig) -> IkeConfig:
        """Read an IKE peer's PSK or Ed25519 keys into its IkeConfig."""
        files = self.ike_files[index]
        pre = f"peer[{index}]."
        if files.auth is IkeAuth.PSK:
            assert files.psk_file is not None
            psk = self.credential(pre + "psk_file", load_psk, files.psk_file)
            return replace(ike, psk=psk)
        if files.certs or files.cacerts:
            return cert_credentials(self, pre, ike, files)
        assert files.private_key is not None and files.peer_public_key is not None
        private = self.credential(pre + "private_key", load_ed25519_private,
                                  files.private_key)
        public = self.credential(pre + "peer_public_key", load_ed25519_public,
                                 files.peer_public_key)
        if public == private.public_key():
            raise self.err(pre + "peer_public_key", f"{files.peer_public_key}: is this host's "
                                                    f"own public key (the pair of "
                                                    f"private_key); name the peer's .pub file")
        return replace(ike, private_key=private, peer_public_key=public)

    def credential(self, field: str, load: Callable[[Path], _T], path: Path) -> _T:
        try:
            return load(path)
        except KeyFileError as e:  # names the file and the reason, never the key
            raise self.err(field, str(e)) from None
