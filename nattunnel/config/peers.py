"""A ``[[peer]]``: the fields of both kinds, a manual peer's static SAs and key files, and the
checks across peers.

``PeerFields.peer`` reads one peer table (an IKE peer's own fields through ``IkeFields``);
``load_keys`` reads every key file once the whole file is checked and refuses two SAs on the
same keying material (AEAD nonce reuse); ``cross_check`` refuses duplicate names, remote_ids,
inbound SPIs and overlapping ``allowed_ips``. A gateway's template peer (``remote_id =
"%any"`` or a wildcard, ``nattunnel.ike.templates``) is checked by ``template``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from ..addr import HostPort, Network
from ..constants import (
    DEFAULT_KEEPALIVE_INTERVAL,
    IKE_PORT,
    REPLAY_WINDOW_DEFAULT,
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
)
from ..esp.suite import SUITES, Suite, suite_by_name
from ..ike.config import Identity, IkeConfig
from ..ike.templates import IdentityPattern, parse_pattern
from ..keys import KeyFileError, load_keymat
from ..tunnel.peer import KeepaliveMode
from ..tunnel.prefixes import PrefixTable
from .fields import show, spi_text
from .ike_settings import IkeFields
from .model import (
    DEFAULT_RELAY,
    DEFAULT_SUITE,
    PEER_NAME_MAX,
    RELAY_MODES,
    SPI_MAX,
    SPI_MIN,
    TFC_PAD_MAX,
    InterfaceConfig,
    PeerConfig,
)

PEER_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
#: every field of a [[peer]] table, of either kind
PEER_KEYS: Final = (
    "fragmentation", "fragment_size", "children",
    "name", "endpoint", "allowed_ips", "suite", "spi_in", "spi_out", "key_in", "key_out",
    "esn", "replay_window", "keepalive", "behind_nat", "keepalive_interval", "tfc_pad",
    "auth", "local_id", "remote_id", "psk_file", "private_key", "peer_public_key", "initiate",
    "certs", "cacerts", "crls", "rsa_pss",
    "encap", "dpd_interval", "ike_proposals", "esp_proposals", "local_ts", "rekey_time",
    "rekey_bytes", "rekey_packets", "ike_rekey_time", "relay", "mobike", "vips", "pools",
    "dns_file", "mediation", "mediated_by", "mediation_peer", "max_clients",
)
#: the most clients ``max_clients`` may allow (the pools bound it too)
MAX_CLIENTS: Final = 1 << 20


class PeerFields(IkeFields):
    """The ``[[peer]]`` tables."""

    def peer(self, t: dict[str, Any], pre: str, listen: tuple[HostPort, ...],
             interface: InterfaceConfig, index: int) -> PeerConfig:
        """One ``[[peer]]``: the fields both kinds have, then those of its kind (``auth``
        set: IKE-managed, else manual SAs). Key files are read later (``load_keys``)."""
        self.check_keys(t, PEER_KEYS, pre)
        name = self.get(t, "name", pre, str, "a string of letters, digits, '_', '.', '-'")
        if not PEER_NAME.fullmatch(name) or len(name) > PEER_NAME_MAX:
            raise self.err(pre + "name", f"{show(name)} is not a valid peer name; use 1.."
                                         f"{PEER_NAME_MAX} of A-Z a-z 0-9 _ . -")
        auth = self.auth(t, pre)

        endpoint = None
        if "endpoint" in t:
            expected = "a string \"ADDRESS:PORT\" or \"[IPV6]:PORT\""
            if auth is not None:
                expected += " (or an address alone: port 500)"
            text = self.get(t, "endpoint", pre, str, expected)
            endpoint = self.endpoint(pre + "endpoint", text, listen,
                                     IKE_PORT if auth is not None else None)

        expected = "an array of inner prefixes, e.g. [\"198.18.100.2/32\"]"
        allowed: list[Network] = []
        # a gateway's client with pools: its prefix is the address it is assigned; a
        # mediation connection has no inner prefixes
        mediation = self.get(t, "mediation", pre, bool, "true or false", False)
        pooled = "pools" in t and "allowed_ips" not in t
        templ = _is_pattern(t.get("remote_id"))
        bare = pooled or templ or (mediation and "allowed_ips" not in t)
        for f, s in [] if bare else self.get_str_list(t, "allowed_ips", pre, expected):
            allowed.append(self.network(f, s))
        if not allowed and not pooled and not mediation and not templ:
            raise self.err(pre + "allowed_ips", "is empty; list the inner prefixes this peer "
                                                "may send from, e.g. [\"198.18.100.2/32\"]")

        replay_window = self.get_int(t, "replay_window", pre, REPLAY_WINDOW_MIN,
                                     REPLAY_WINDOW_MAX, REPLAY_WINDOW_DEFAULT)
        keepalive = self.keepalive_mode(t, pre)
        behind_nat = self.get(t, "behind_nat", pre, bool, "true or false", False)
        interval = self.seconds(t, "keepalive_interval", pre, DEFAULT_KEEPALIVE_INTERVAL,
                                zero=False)
        tfc_pad = self.get_int(t, "tfc_pad", pre, 0, min(interface.mtu, TFC_PAD_MAX), 0)
        relay = self.get(t, "relay", pre, str, "\"auto\", \"always\" or \"never\"",
                         DEFAULT_RELAY)
        if relay not in RELAY_MODES:
            raise self.err(pre + "relay", f"{show(relay)} is not a relay mode; expected "
                                          "\"auto\", \"always\" or \"never\"")

        if auth is not None:
            ike, initiate = self.ike(t, pre, name, auth, endpoint, tuple(allowed), interface,
                                     index)
            self.template(t, pre, ike, initiate, endpoint)
            ike.replay_window = replay_window
            ike.tfc_pad = tfc_pad
            ike.keepalive_interval = interval
            ike.keepalive = keepalive
            first = ike.esp_proposals[0]
            mediated_by, mediation_peer = self.mediated(t, pre, mediation, endpoint)
            return PeerConfig(
                name=name, endpoint=endpoint, allowed_ips=tuple(allowed), suite=first.suite,
                spi_in=None, spi_out=None, key_in=b"", key_out=b"", key_in_path=None,
                key_out_path=None, esn=first.esn, replay_window=replay_window,
                keepalive=keepalive, behind_nat=behind_nat, keepalive_interval=interval,
                tfc_pad=tfc_pad, ike=ike, initiate=initiate, relay=relay,
                mediation=mediation, mediated_by=mediated_by, mediation_peer=mediation_peer,
            )

        if "max_clients" in t:
            raise self.err(pre + "max_clients", "is for an IKE peer with remote_id = \"%any\" "
                                                "or a wildcard (a template for many clients)")
        suite, spi_in, spi_out, key_in_path, key_out_path, esn = self.manual_sa(t, pre)
        return PeerConfig(
            name=name, endpoint=endpoint, allowed_ips=tuple(allowed), suite=suite,
            spi_in=spi_in, spi_out=spi_out, key_in=b"", key_out=b"",  # load_keys() fills
            key_in_path=key_in_path, key_out_path=key_out_path, esn=esn,
            replay_window=replay_window, keepalive=keepalive, behind_nat=behind_nat,
            keepalive_interval=interval, tfc_pad=tfc_pad, relay=relay,
        )

    def identity(self, t: dict[str, Any], key: str, pre: str) -> Identity:
        """``remote_id`` may also be a pattern (``%any``, ``*@DOMAIN``, ``*.DOMAIN``, a DN
        with ``*`` values): a template for every client it matches."""
        text = t.get(key)
        if isinstance(text, str) and (key == "remote_id" or text.strip().startswith("%")):
            try:
                pattern = parse_pattern(text)
            except ValueError as e:
                raise self.err(pre + key, f"{show(text)}: {e}") from None
            if pattern is not None and key != "remote_id":
                raise self.err(pre + key, f"{show(text)}: only remote_id may be %any or a "
                                          f"wildcard")
            if pattern is not None:
                return pattern
        return super().identity(t, key, pre)

    def template(self, t: dict[str, Any], pre: str, ike: IkeConfig, initiate: bool,
                 endpoint: HostPort | None) -> None:
        """A template peer (``remote_id`` a pattern) answers clients it authenticated by
        certificate and gives each an address from its pools; ``max_clients``. A PSK is
        refused: every client would hold the one secret, so any of them could claim any
        identity the pattern matches, and take that client's address and traffic."""
        if not isinstance(ike.remote_id, IdentityPattern):
            if "max_clients" in t:
                raise self.err(pre + "max_clients", "is for a peer with remote_id = \"%any\" "
                                                    "or a wildcard (a template for many "
                                                    "clients)")
            return
        what = f"remote_id = {show(str(ike.remote_id))}"
        if ike.auth != "pubkey" or "cacerts" not in t:
            field = "remote_id" if ike.auth != "pubkey" else "cacerts"
            raise self.err(pre + field, f"{what} needs auth = \"pubkey\" with cacerts: each "
                                        f"client proves its identity with a certificate from "
                                        f"those CAs. With a PSK (or one raw public key) every "
                                        f"client shares the secret, and any of them could "
                                        f"claim another's identity and its address")
        for key, why in (("endpoint", "it only answers"), ("mediation", "it only answers"),
                         ("mediated_by", "it only answers"),
                         ("allowed_ips", "each client's prefix is its virtual IP from pools")):
            if key in t and t[key] is not False:
                raise self.err(pre + key, f"is not for a peer with {what}: {why}")
        if initiate:
            raise self.err(pre + "initiate", f"must be false with {what}: it only answers")
        if not ike.pools:
            raise self.err(pre + "pools", f"is needed with {what}: each client's inner "
                                          f"address comes from the pools, and its routes "
                                          f"follow it")
        if "max_clients" in t:
            ike.max_clients = self.get_int(t, "max_clients", pre, 1, MAX_CLIENTS)

    def mediated(self, t: dict[str, Any], pre: str, mediation: bool,
                 endpoint: HostPort | None) -> tuple[str | None, Identity | None]:
        """IKEv2 mediation: ``mediated_by`` (the name of the mediation connection's
        [[peer]]) and ``mediation_peer`` (an identity), for a peer without an endpoint."""
        if "mediated_by" not in t:
            if "mediation_peer" in t:
                raise self.err(pre + "mediation_peer", "needs mediated_by (the [[peer]] name "
                                                       "of the mediation connection)")
            return None, None
        by = self.get(t, "mediated_by", pre, str, "the name of the [[peer]] with mediation = "
                                                  "true (the connection to the server)")
        if mediation or endpoint is not None:
            raise self.err(pre + "mediated_by", "is for a peer found through a mediation "
                                                "server: no endpoint, and not mediation = true")
        who = self.identity(t, "mediation_peer", pre) if "mediation_peer" in t else None
        return by, who

    def keepalive_mode(self, t: dict[str, Any], pre: str) -> KeepaliveMode:
        mode_text = self.get(t, "keepalive", pre, str, "\"nat\", \"always\" or \"never\"",
                             KeepaliveMode.NAT.value)
        try:
            keepalive = KeepaliveMode(mode_text)
        except ValueError:
            raise self.err(pre + "keepalive",
                           f"{show(mode_text)} is not a keepalive mode; "
                           f"expected \"nat\", \"always\" or \"never\"") from None
        return keepalive

    def manual_sa(self, t: dict[str, Any], pre: str
                  ) -> tuple[Suite, int, int, Path, Path, bool]:
        """A manual peer's static SAs: (suite, spi_in, spi_out, key_in, key_out, esn)."""
        suite_name = self.get(t, "suite", pre, str,
                              f"a suite name, one of {', '.join(sorted(SUITES))}", DEFAULT_SUITE)
        try:
            suite = suite_by_name(suite_name)
        except ValueError as e:
            message = str(e)
            if len(suite_name) > 60:  # suite_by_name shows the whole name
                message = message.replace(repr(suite_name), show(suite_name), 1)
            raise self.err(pre + "suite", message) from None

        spi_in = self.get_int(t, "spi_in", pre, SPI_MIN, SPI_MAX, hex_=True)
        spi_out = self.get_int(t, "spi_out", pre, SPI_MIN, SPI_MAX, hex_=True)
        key_in_path = self.key_path(t, "key_in", pre, suite)
        key_out_path = self.key_path(t, "key_out", pre, suite)
        esn = self.get(t, "esn", pre, bool, "true or false", False)
        return suite, spi_in, spi_out, key_in_path, key_out_path, esn

    def key_path(self, t: dict[str, Any], key: str, pre: str, suite: Suite) -> Path:
        text = self.get(t, key, pre, str, f"the path of a key file made by `nattunnel keygen "
                                          f"--suite {suite.name} PATH`")
        if not text:
            raise self.err(pre + key, "is empty; expected the path of a key file")
        # Joined, not resolved: a symbolic link as the last component must stay visible to
        # load_keymat, which refuses it.
        return self.base_dir / self.path_text(pre + key, text)

    def load_keys(self, peers: list[PeerConfig]) -> list[PeerConfig]:
        """Read every key file; refuse two SAs with the same keying material."""
        seen: dict[bytes, str] = {}
        out = []
        for i, p in enumerate(peers):
            if p.ike is not None:
                out.append(replace(p, ike=self.ike_credentials(i, p.ike)))
                continue
            loaded = {}
            for key, path in (("key_in", p.key_in_path), ("key_out", p.key_out_path)):
                assert path is not None
                field = f"peer[{i}].{key}"
                data = self.key(field, path, p.suite)
                # Compared as bytes, reported by field name only.
                if data in seen:
                    raise self.err(field, f"holds the same keying material as {seen[data]}; "
                                          f"every SA (each direction of each peer) needs its "
                                          f"own key: generate one with `nattunnel keygen`")
                seen[data] = field
                loaded[key] = data
            out.append(replace(p, key_in=loaded["key_in"], key_out=loaded["key_out"]))
        return out

    def key(self, field: str, path: Path, suite: Suite) -> bytes:
        try:
            data = load_keymat(path, suite)
        except KeyFileError as e:
            # KeyFileError names the file and the reason, never the key.
            message = str(e)
            if f"expected {suite.keymat_len} octets" in message:
                message += (f" (peer suite {suite.name}: {suite.key_len}-octet key + "
                            f"{suite.salt_len}-octet salt)")
            raise self.err(field, message) from None
        return data

    def cross_check(self, peers: list[PeerConfig]) -> None:
        """Across peers: unique names, remote_ids and spi_in, no overlapping allowed_ips."""
        names: dict[str, int] = {}
        spis: dict[int, int] = {}
        remote_ids: dict[Identity, int] = {}
        held: PrefixTable[tuple[str, str]] = PrefixTable()  # the same, for overlap checks
        for i, p in enumerate(peers):
            pre = f"peer[{i}]."
            if p.name in names:
                raise self.err(pre + "name", f"{p.name!r} is already the name of "
                                             f"peer[{names[p.name]}]; peer names must be unique")
            names[p.name] = i
            if p.ike is not None:
                rid = p.ike.remote_id
                if rid in remote_ids:
                    j = remote_ids[rid]
                    raise self.err(pre + "remote_id", f"{str(rid)!r} is already the remote_id "
                                                      f"of peer[{j}] ({peers[j].name!r}); an "
                                                      f"IKE peer is found by its identity, so "
                                                      f"remote_id must be unique")
                remote_ids[rid] = i
            if p.spi_in is not None:
                if p.spi_in in spis:
                    j = spis[p.spi_in]
                    raise self.err(pre + "spi_in", f"{spi_text(p.spi_in)} is already the spi_in "
                                                   f"of peer[{j}] ({peers[j].name!r}); "
                                                   f"inbound SPIs must be unique")
                spis[p.spi_in] = i
            for j, net in enumerate(p.allowed_ips):
                field = f"{pre}allowed_ips[{j}]"
                clash = held.conflict(net)
                if clash is not None:
                    other, (ofield, oname) = clash
                    whose = "the same peer" if oname == p.name else f"peer {oname!r}"
                    raise self.err(field, f"{net} overlaps {other} ({ofield}, {whose}); "
                                          f"every inner address must belong to one prefix "
                                          f"of one peer")
                held.add(net, (field, p.name))


def _is_pattern(remote_id: object) -> bool:
    """Whether ``remote_id`` writes a pattern (a malformed one too: ``identity`` says why)."""
    if not isinstance(remote_id, str):
        return False
    try:
        return parse_pattern(remote_id) is not None
    except ValueError:
        return True
