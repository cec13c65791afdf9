"""The status (``nattunnel.control.status``) as ``nattunnel show`` prints it: a block per
peer, in the manner of ``wg show`` and ``swanctl --list-sas``."""

from __future__ import annotations

from typing import Any


def duration(seconds: float | None) -> str:
    """``3 s``, ``4m05s``, ``2h30m``, ``3d4h``; "never" for None."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


def octets(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _nat(nat: dict[str, bool] | None) -> str:
    if nat is None:
        return ""
    if nat["local_behind_nat"] and nat["remote_behind_nat"]:
        return " (NAT: both sides)"
    if nat["local_behind_nat"]:
        return " (NAT: this side)"
    if nat["remote_behind_nat"]:
        return " (NAT: peer side)"
    return " (NAT: none)"


def _ike_sa(sa: dict[str, Any], peer: str = "") -> list[str]:
    role = "initiator" if sa["initiator"] else "responder"
    rekey = f", rekey in {duration(sa['rekey_in'])}" if sa["rekey_in"] is not None else ""
    lines = [f"  IKE SA: {sa['state']}{' (rekeyed)' if sa['rekeyed'] else ''}, {role}, "
             f"{sa['proposal'] or 'no proposal yet'}, SPIs {sa['spi_i']}_i {sa['spi_r']}_r, "
             f"{sa['local']} <-> {sa['remote']}, {duration(sa['age'])} old{rekey}"]
    if sa.get("mobike"):
        others = ", ".join(sa.get("peer_addresses") or []) or "none announced"
        lines.append(f"    MOBIKE: {sa.get('path_updates', 0)} address update(s); the peer's "
                     f"other addresses: {others}")
    frag = sa.get("fragmentation") or {}
    if frag.get("negotiated"):
        drops = ", ".join(f"{k} {v}" for k, v in sorted((frag.get("drops") or {}).items()))
        lines.append(f"    fragmentation: {frag.get('messages_sent', 0)} message(s) sent in "
                     f"{frag.get('fragments_sent', 0)} fragments, "
                     f"{frag.get('reassembled', 0)} reassembled"
                     f"{'; drops: ' + drops if drops else ''}")
    for c in sa["children"]:
        rekey = f", rekey in {duration(c['rekey_in'])}" if c["rekey_in"] is not None else ""
        out = (", not in use for sending" if not c["in_use"] else
               f", out {c['tx_packets']} packets" if c["tx_bytes"] is None else
               f", out {octets(c['tx_bytes'])} ({c['tx_packets']} packets)")
        named = f" {c['name']}" if c.get("name") not in ("", None, peer) else ""
        lines.append(f"    child SA{named}: SPIs in {c['spi_in']} out {c['spi_out']}, {c['suite']}"
                     f"{' ESN' if c['esn'] else ''}, {duration(c['age'])} old{rekey}; "
                     f"in {octets(c['rx_bytes'])} ({c['rx_packets']} packets){out}")
        lines.append(f"      {', '.join(c['local_ts'])} === {', '.join(c['remote_ts'])}")
    return lines


def peer_block(p: dict[str, Any], mediated: dict[str, Any] | None = None) -> list[str]:
    lines = [f"peer {p['name']}: {p['state']} ({p['kind']})"]
    lines.append(f"  endpoint: {p['endpoint'] or 'not known yet'}{_nat(p['nat'])}")
    lines.append(f"  allowed ips: {', '.join(p['allowed_ips']) or 'none'}")
    for sa in p["ike_sas"]:
        lines += _ike_sa(sa, p["name"])
    lines.append(f"  transfer: {octets(p['rx_bytes'])} received ({p['rx_packets']} packets), "
                 f"{octets(p['tx_bytes'])} sent ({p['tx_packets']} packets)")
    handshake = (f"; last handshake: {duration(p['last_handshake'])} ago"
                 if p["kind"] == "ike" and p["last_handshake"] is not None else "")
    last = duration(p["last_received"])
    lines.append(f"  last packet received: {last}{' ago' if last != 'never' else ''}"
                 f"{handshake}")
    ka = p["keepalive"]
    if ka["on"] or ka["sent"] or ka["received"]:
        lines.append(f"  keepalive: {'every ' + duration(ka['interval']) if ka['on'] else 'off'}"
                     f" (sent {ka['sent']}, received {ka['received']})")
    lines += _path_lines(p.get("path") or {}, mediated)
    if p["rebinds"]:
        lines.append(f"  moved (NAT rebinding): {p['rebinds']} times")
    if p["drops"]:
        lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in sorted(p["drops"].items())))
    if p["last_error"] and p["state"] != "up":
        lines.append(f"  last error: {p['last_error']}")
    return lines


def _path_lines(path: dict[str, Any], mediated: dict[str, Any] | None) -> list[str]:
    """How the peer is reached: through the TURN relay, or direct (the candidate pair the
    checks chose, if mediated); the relay <-> direct moves (io/relay.py's PathMover)."""
    lines = []
    if path.get("kind") == "relay":
        bound = "bound" if path.get("channel_bound") else "not bound yet"
        lines.append(f"  path: relay via {path.get('server')} (relayed address "
                     f"{path.get('relayed') or 'none yet'}, channel {path.get('channel')} "
                     f"{bound})")
    elif mediated:
        lines.append(f"  path: direct, candidate pair {mediated.get('local')} -> "
                     f"{mediated.get('remote')} (chosen by the connectivity checks)")
    elif path.get("direct"):
        lines.append(f"  path: direct to {path['direct']}")
    if path.get("moving"):
        lines.append(f"  path: moving to the direct path {path.get('direct')}")
    if path.get("moves_to_direct") or path.get("moves_to_relay") or path.get("failed_direct_tries"):
        lines.append(f"  path moves: {path.get('moves_to_direct', 0)} to direct, "
                     f"{path.get('moves_to_relay', 0)} to the relay ({path.get('fallbacks', 0)} "
                     f"when the direct path died), {path.get('failed_direct_tries', 0)} direct "
                     f"tries unanswered; last: {path.get('reason') or '-'}")
    return lines


def _mediation_lines(med: dict[str, Any]) -> list[str]:
    """The mediation client: the server, our candidates, each session's check list."""
    lines = [f"  mediation: server {med.get('server')} "
             f"{'up' if med.get('up') else 'not up'}, server-reflexive address "
             f"{med.get('srflx') or 'none yet'}"]
    kinds = {1: "host", 2: "peer-reflexive", 3: "server-reflexive", 4: "relayed"}
    cands = [f"{kinds.get(c.get('type'), c.get('type'))} {c.get('addr')}"
             for c in med.get("candidates") or []]
    if cands:
        lines.append("  candidates: " + ", ".join(cands))
    for session in med.get("sessions") or []:
        pairs = session.get("pairs") or []
        counts: dict[str, int] = {}
        for pair in pairs:
            counts[str(pair.get("state"))] = counts.get(str(pair.get("state")), 0) + 1
        lines.append(f"  checks with {session.get('peer')}: {len(pairs)} pairs"
                     + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
                        if counts else ""))
    for name, err in sorted((med.get("last_error") or {}).items()):
        lines.append(f"  mediation last error ({name}): {err}")
    return lines


def _mediation_server_lines(srv: dict[str, Any] | None) -> list[str]:
    """A mediation server: the peers registered (identity at address) and its counters."""
    if not srv:
        return []
    reg = srv.get("registered") or {}
    stats = {k: v for k, v in (srv.get("stats") or {}).items() if v}
    return [f"  mediation server: {len(reg)} registered"
            + (" (" + ", ".join(f"{i} at {a}" for i, a in sorted(reg.items())) + ")"
               if reg else "")
            + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) if stats
               else "")]


def _coalescer_line(co: dict[str, Any] | None) -> list[str]:
    """The TUN device's coalescer (io/coalesce.py): writes, super-packets and what went out
    in them, whether UDP is coalesced, failed writes."""
    if not co:
        return []
    sp, merged = co.get("super_packets") or {}, co.get("coalesced") or {}
    line = (f"  TUN writes: {co.get('writes', 0)} ({co.get('single', 0)} single; "
            f"super-packets: TCP {sp.get('tcp', 0)} of {merged.get('tcp', 0)} segments, "
            f"UDP {sp.get('udp', 0)} of {merged.get('udp', 0)} datagrams); UDP coalescing "
            + ("on" if co.get("uso") else "off"))
    if co.get("uso_refused"):
        line += " (the kernel refused a UDP super-packet: one datagram per write)"
    if co.get("write_drops"):
        line += f"; write drops {co['write_drops']}"
    return [line]


def render(status: dict[str, Any]) -> str:
    """The whole status as text."""
    lines = [f"nattunnel {status['version']}: listening on {', '.join(status['listen'])}, "
             f"up {duration(status['uptime'])}"]
    for key, title in (("drops", "drops"), ("endpoint_drops", "endpoint drops"),
                       ("send_errors", "send errors"), ("errors", "internal errors")):
        counts = {k: v for k, v in (status.get(key) or {}).items() if v}
        if counts:
            lines.append(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(
                counts.items())))
    lines += _coalescer_line(status.get("coalescer"))
    refused = {k: v for k, v in ((status.get("ike") or {}).get("cert_refusals") or {}).items()
               if v}
    if refused:
        lines.append("  certificates refused: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in sorted(refused.items())))
    med = status.get("mediation")
    if med:
        lines += _mediation_lines(med)
    lines += _mediation_server_lines(status.get("mediation_server"))
    chosen = (med or {}).get("paths") or {}
    for p in status["peers"].values():
        lines.append("")
        lines += peer_block(p, chosen.get(p["name"]))
    return "\n".join(lines) + "\n"
