"""Reading ``swanctl --list-sas --pretty``: the vici message format as swanctl prints it, and
charon's IKE and child SAs as data (``SwanIkeSa``, ``SwanChildSa``). Used by
``nattunnel.lab.strongswan``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SwanChildSa", "SwanIkeSa", "VNode", "parse_list_sas", "parse_vici_pretty"]

# --------------------------------------------------------------------------- list-sas parsing

VNode = dict[str, Any]


def parse_vici_pretty(text: str) -> list[tuple[str, VNode]]:
    """Parse ``swanctl --pretty`` output (vici messages, one ``key = value`` per line, sections
    ``name {`` ... ``}``, lists ``name [`` ... ``]``) into ``(message name, dict)`` pairs.
    Values are strings, lists of strings or nested dicts; a repeated key keeps the last value."""
    messages: list[tuple[str, VNode]] = []
    stack: list[VNode] = []
    current_list: list[str] | None = None
    top_name = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if current_list is not None:
            if line == "]":
                current_list = None
            else:
                current_list.append(line)
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            node: VNode = {}
            if stack:
                stack[-1][name] = node
            else:
                top_name = name
                messages.append((top_name, node))
            stack.append(node)
            continue
        if line.endswith("[") and stack:
            current_list = []
            stack[-1][line[:-1].strip().rstrip("=").strip()] = current_list
            continue
        if " = " in line and stack:
            key, _, value = line.partition(" = ")
            stack[-1][key.strip()] = value
        elif line.endswith(" =") and stack:
            stack[-1][line[:-2].strip()] = ""
    return messages


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return default


def _spi(value: Any) -> int:
    """vici prints SPIs as hex without prefix (``c1a2b3c4``, IKE: 16 hex digits)."""
    try:
        return int(str(value), 16)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class SwanChildSa:
    """A child SA as charon lists it (``swanctl --list-sas``)."""

    name: str
    uniqueid: int
    reqid: int
    state: str
    mode: str
    protocol: str
    encap: bool
    spi_in: int
    spi_out: int
    encr_alg: str
    encr_keysize: int
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    raw: VNode = field(repr=False, compare=False)

    @classmethod
    def from_vici(cls, d: VNode) -> SwanChildSa:
        return cls(
            name=str(d.get("name", "")),
            uniqueid=_int(d.get("uniqueid")),
            reqid=_int(d.get("reqid")),
            state=str(d.get("state", "")),
            mode=str(d.get("mode", "")),
            protocol=str(d.get("protocol", "")),
            encap=d.get("encap") == "yes",
            spi_in=_spi(d.get("spi-in")),
            spi_out=_spi(d.get("spi-out")),
            encr_alg=str(d.get("encr-alg", "")),
            encr_keysize=_int(d.get("encr-keysize")),
            bytes_in=_int(d.get("bytes-in")),
            bytes_out=_int(d.get("bytes-out")),
            packets_in=_int(d.get("packets-in")),
            packets_out=_int(d.get("packets-out")),
            local_ts=tuple(d.get("local-ts", ())),
            remote_ts=tuple(d.get("remote-ts", ())),
            raw=d,
        )


@dataclass(frozen=True)
class SwanIkeSa:
    """An IKE SA as charon lists it (``swanctl --list-sas``), with its child SAs; not to be
    confused with nattunnel's own ``nattunnel.ike.sa.IkeSa``."""

    name: str
    uniqueid: int
    state: str
    initiator: bool
    local_host: str
    local_port: int
    local_id: str
    remote_host: str
    remote_port: int
    remote_id: str
    spi_i: int
    spi_r: int
    #: the NAT flags swanctl reports: nat-local (this side behind NAT), nat-remote (the peer
    #: behind NAT), nat-fake (this side pretends to be behind NAT), nat-any (any of them)
    nat_local: bool
    nat_remote: bool
    nat_fake: bool
    nat_any: bool
    encr_alg: str
    encr_keysize: int
    prf_alg: str
    dh_group: str
    children: tuple[SwanChildSa, ...]
    raw: VNode = field(repr=False, compare=False)

    @classmethod
    def from_vici(cls, name: str, d: VNode) -> SwanIkeSa:
        kids = d.get("child-sas", {})
        return cls(
            name=name,
            uniqueid=_int(d.get("uniqueid")),
            state=str(d.get("state", "")),
            initiator=d.get("initiator") == "yes",
            local_host=str(d.get("local-host", "")),
            local_port=_int(d.get("local-port")),
            local_id=str(d.get("local-id", "")),
            remote_host=str(d.get("remote-host", "")),
            remote_port=_int(d.get("remote-port")),
            remote_id=str(d.get("remote-id", "")),
            spi_i=_spi(d.get("initiator-spi")),
            spi_r=_spi(d.get("responder-spi")),
            nat_local=d.get("nat-local") == "yes",
            nat_remote=d.get("nat-remote") == "yes",
            nat_fake=d.get("nat-fake") == "yes",
            nat_any=d.get("nat-any") == "yes",
            encr_alg=str(d.get("encr-alg", "")),
            encr_keysize=_int(d.get("encr-keysize")),
            prf_alg=str(d.get("prf-alg", "")),
            dh_group=str(d.get("dh-group", "")),
            children=tuple(
                SwanChildSa.from_vici(v) for v in kids.values() if isinstance(v, dict)
            ),
            raw=d,
        )

    def child(self, name: str, state: str | None = "INSTALLED") -> SwanChildSa | None:
        """The (first) CHILD_SA called ``name``, optionally only in ``state``."""
        for c in self.children:
            if c.name == name and (state is None or c.state == state):
                return c
        return None


def parse_list_sas(text: str) -> list[SwanIkeSa]:
    """IKE SAs from ``swanctl --list-sas --pretty`` (one ``list-sa event`` per IKE_SA)."""
    out: list[SwanIkeSa] = []
    for msg, body in parse_vici_pretty(text):
        if msg != "list-sa event":
            continue
        for name, d in body.items():
            if isinstance(d, dict):
                out.append(SwanIkeSa.from_vici(name, d))
    return out
