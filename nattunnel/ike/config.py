"""What one IKE peer is configured with (docs/config.md): its identities (section 3.5), how it
authenticates, its proposals, traffic selectors, lifetimes and the settings of its child SAs.

``nattunnel.config`` builds these from the TOML file; the IKE SA state machine and the manager
read them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..addr import Network
from ..constants import IdType
from ..tunnel.peer import KeepaliveMode
from .certs import TrustStore, canonical_dn, format_dn, parse_dn
from .crypto import SigningKey
from .pool import AddressPool
from .proposals import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, EspProposal, IkeProposal

#: section 2.1: retransmit after 0.5 s, doubling, at most this many tries
RETRANSMIT_BASE = 0.5
RETRANSMIT_TRIES = 6
#: a child SA the peer refused (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, ...): ask again after
#: this long, doubling at each refusal up to CHILD_RETRY_MAX, while the IKE SA lives
CHILD_RETRY_BASE = 30.0
CHILD_RETRY_MAX = 600.0
#: IKE fragmentation (RFC 7383): the largest IP datagram of an IKE fragment, by default the
#: IPv6 minimum MTU (RFC 8200 section 5), as strongSwan's charon.fragment_size
DEFAULT_FRAGMENT_SIZE = 1280


@dataclass(frozen=True)
class Identity:
    """An IKE identity: ID type and data (section 3.5)."""

    id_type: int
    data: bytes
    #: a DN identity's name (None for other types, and for a DN as it came from the wire)
    name: x509.Name | None = field(default=None, compare=False, hash=False)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``fqdn:host``, ``keyid:#hex`` (binary) or ``keyid:text`` (its UTF-8 octets), an IP
        address, or a bare name (FQDN), as strongSwan writes them (``@NAME`` and ``@#HEX``
        too). Anything else is a ValueError (never a UnicodeError) saying what is wrong: an
        FQDN is printable ASCII without whitespace (section 3.5), a bare name has no ':',
        ``#hex`` is whole octets, an IPv6 address has no zone, and no identity is empty or
        longer than 255 octets."""
        limit = 255  # a DNS name's limit (RFC 1035); key ids are hashes or short names

        def checked(data: bytes) -> bytes:
            if len(data) > limit:
                raise ValueError(f"is {len(data)} octets long; an identity is at most {limit}")
            return data

        def fqdn(name: str) -> bytes:
            if not name.isascii():
                raise ValueError("an FQDN identity must be ASCII (RFC 7296 section 3.5); "
                                 "write an internationalized name in its IDNA form (xn--...)")
            if any(c.isspace() or not c.isprintable() for c in name):
                raise ValueError("an FQDN identity must be printable ASCII without whitespace "
                                 "or control characters")
            return checked(name.encode("ascii"))

        if text.startswith("@@"):  # strongSwan: @@user@example.org is RFC822_ADDR
            text = "email:" + text[2:]
        for prefix in ("email:", "rfc822:", "userfqdn:"):
            if text.startswith(prefix):
                text = text[len(prefix):]
                if "@" not in text:
                    raise ValueError("an e-mail identity (RFC822_ADDR) is NAME@DOMAIN")
        if text.startswith("asn1dn:") or ("=" in text and not text.startswith(
                ("fqdn:", "keyid:", "@"))):
            return cls.from_name(parse_dn(text.removeprefix("asn1dn:")))
        if "@" in text and not text.startswith(("fqdn:", "keyid:", "@")):
            return cls(IdType.RFC822_ADDR, fqdn(text))
        if text.startswith("@#"):  # strongSwan's shorthands
            text = "keyid:#" + text[2:]
        elif text.startswith("@"):
            text = "fqdn:" + text[1:]
        if text.startswith("keyid:"):
            v = text[6:]
            if v.startswith("#"):  # strongSwan: keyid:#hex is binary, keyid:text is text
                digits = v[1:]
                if not digits:
                    raise ValueError("has no hex digits after keyid:# (or @#)")
                if not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise ValueError("keyid:# (or @#) must be followed by hex digits (0-9, a-f) "
                                     "only, two per octet")
                if len(digits) % 2:
                    raise ValueError(f"has an odd number of hex digits ({len(digits)}) after "
                                     f"keyid:# (or @#); write two per octet, e.g. 0a")
                return cls(IdType.KEY_ID, checked(bytes.fromhex(digits)))
            if not v:
                raise ValueError("has nothing after keyid:")
            try:
                data = v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the keyid: text is not valid Unicode (it holds a lone "
                                 "surrogate)") from None
            return cls(IdType.KEY_ID, checked(data))
        if text.startswith("fqdn:"):
            if not text[5:]:
                raise ValueError("has nothing after fqdn:")
            return cls(IdType.FQDN, fqdn(text[5:]))
        if not text:
            raise ValueError("is empty")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            name = fqdn(text)
            if ":" in text:
                raise ValueError("is not an IP address, and a bare name (an FQDN) has no ':'; "
                                 "write fqdn:NAME if the name really holds one") from None
            return cls(IdType.FQDN, name)
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise ValueError("an IP address identity has no zone (%...): the ID payload holds "
                             "the 16 address octets only")
        return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)

    @classmethod
    def from_name(cls, name: x509.Name) -> Identity:
        """ID_DER_ASN1_DN of ``name`` (a certificate's subject, or a parsed DN): its data in
        ``canonical_dn``'s string types, so that one name is one identity whichever string
        types its certificate or the peer used."""
        return cls(IdType.DER_ASN1_DN, canonical_dn(name), name)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        if self.id_type == IdType.DER_ASN1_DN:  # as strongSwan writes it
            return format_dn(self.name) if self.name is not None else "asn1dn:#" + self.data.hex()
        # binary, the form parse() reads back (keyid:TEXT would give other octets)
        return "keyid:#" + self.data.hex()


@dataclass(frozen=True)
class ChildConfig:
    """One child SA a peer asks for (swanctl's ``children { NAME { local_ts remote_ts } }``):
    its name (for the log and ``show``) and its traffic selectors, our side and the peer's."""

    name: str
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]


@dataclass
class IkeConfig:
    """What one IKE peer needs (from the TOML config, docs/config.md)."""

    name: str
    local_id: Identity
    remote_id: Identity
    auth: str  # "psk" | "pubkey"
    psk: bytes = field(default=b"", repr=False)
    private_key: SigningKey | None = None
    peer_public_key: ed25519.Ed25519PublicKey | None = None
    #: certificates (docs/certificates.md): ours, end entity first, then the intermediate
    #: CAs sent with it; the CAs and CRLs the peer's certificate is checked against (None:
    #: the peer authenticates with ``peer_public_key`` or a PSK); RSA signatures with PSS
    certs: tuple[x509.Certificate, ...] = ()
    trust: TrustStore | None = None
    rsa_pss: bool = False
    local_ts: tuple[Network, ...] = ()
    remote_ts: tuple[Network, ...] = ()
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS
    force_encap: bool = False
    dpd_interval: float = 30.0
    retransmit_tries: int = RETRANSMIT_TRIES
    #: rekey child SAs this long after they were made (0: never), minus up to
    #: ``rekey_jitter`` of it at random so that peers do not collide (section 2.8)
    child_rekey_time: float = 3600.0
    #: rekey a child SA after this many ESP octets or packets in either direction (0: never)
    rekey_bytes: int = 0
    rekey_packets: int = 0
    #: rekey the IKE SA this long after it was made (0: never), with the same jitter
    ike_rekey_time: float = 14400.0
    rekey_jitter: float = 0.1
    #: settings of the child SAs' ESP (docs/config.md)
    replay_window: int = 1024
    tfc_pad: int = 0
    keepalive_interval: float = 20.0
    #: NAT keepalives: when IKE finds this side behind NAT (NAT), always, or never
    keepalive: KeepaliveMode = KeepaliveMode.NAT
    #: MOBIKE (RFC 4555): offer and accept MOBIKE_SUPPORTED in IKE_AUTH; with it the
    #: initiator moves the SAs to a new address with UPDATE_SA_ADDRESSES. Off for a bare
    #: IkeConfig; a configuration file's ``mobike`` is on unless it says false
    mobike: bool = False
    #: a road-warrior client (docs/road-warrior.md): the address families (4, 6) asked for
    #: in a CFG_REQUEST (swanctl's ``vips``), and the file the DNS servers are written to
    vips: tuple[int, ...] = ()
    dns_file: str = "/etc/resolv.conf"
    #: a gateway: the pools its clients' addresses and DNS servers come from (``pools``)
    pools: tuple[AddressPool, ...] = ()
    #: a template gateway peer (``remote_id = "%any"`` or a wildcard, nattunnel.ike.templates):
    #: at most this many clients at once (0: as many as its pools have addresses)
    max_clients: int = 0
    #: IKE fragmentation (RFC 7383): offer IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT
    #: and, when both sent it, send an encrypted message whose IP datagram would pass
    #: ``fragment_size`` octets as fragments. Off for a bare IkeConfig; a configuration
    #: file's ``fragmentation`` is on unless it says false (swanctl's fragmentation = yes)
    fragmentation: bool = False
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    #: several child SAs (docs/config.md, "Several subnets"): as the initiator, the first
    #: goes in IKE_AUTH and each of the others in a CREATE_CHILD_SA of its own; as the
    #: responder, what the peer asks for is narrowed to the first that fits. Empty: one
    #: child with ``local_ts`` and ``remote_ts``
    children: tuple[ChildConfig, ...] = ()

    def child_configs(self) -> tuple[ChildConfig, ...]:
        """The child SAs this peer asks for, in order (at least one)."""
        return self.children or (ChildConfig(self.name, self.local_ts, self.remote_ts),)
