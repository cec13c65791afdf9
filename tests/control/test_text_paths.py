"""``nattunnel show`` (control/text.py): each peer's path (the relay, a direct path the
connectivity checks chose, the path mover's moves) and the mediation client's candidates
and check lists."""

from __future__ import annotations

from typing import Any

from nattunnel.control.text import peer_block, render


def _peer(path: dict[str, Any]) -> dict[str, Any]:
    return {"name": "c", "state": "up", "kind": "ike", "endpoint": "198.18.0.4:4500",
            "nat": None, "allowed_ips": [], "ike_sas": [], "rx_bytes": 0, "rx_packets": 0,
            "tx_bytes": 0, "tx_packets": 0, "last_handshake": None, "last_received": None,
            "keepalive": {"on": False, "sent": 0, "received": 0, "interval": 20},
            "rebinds": 0, "drops": {}, "last_error": None, "path": path}


def test_moves_and_a_direct_path() -> None:
    text = "\n".join(peer_block(_peer({
        "kind": "direct", "direct": "198.18.0.3:4500", "moving": False, "moves_to_direct": 2,
        "moves_to_relay": 3, "fallbacks": 1, "failed_direct_tries": 0,
        "reason": "a direct path answered"})))
    assert "  path: direct to 198.18.0.3:4500" in text
    assert ("  path moves: 2 to direct, 3 to the relay (1 when the direct path died), 0 "
            "direct tries unanswered; last: a direct path answered") in text
    text = "\n".join(peer_block(_peer({"kind": "direct", "direct": "198.18.0.3:4500",
                                        "moving": True})))
    assert "  path: moving to the direct path 198.18.0.3:4500" in text
    assert "path" not in "\n".join(peer_block(_peer({"kind": "direct"})))


def test_mediation_candidates_checks_and_the_chosen_pair() -> None:
    status = {"version": "x", "listen": ["0.0.0.0:4500"], "uptime": 1.0,
              "peers": {"c": _peer({"kind": "direct"})},
              "mediation": {"server": "198.18.0.2:4500", "up": True,
                            "srflx": "198.18.0.1:5057",
                            "candidates": [{"type": 1, "addr": "198.19.1.2:4500"},
                                           {"type": 3, "addr": "198.18.0.1:5057"}],
                            "sessions": [{"peer": "c", "pairs": [
                                {"state": "succeeded"}, {"state": "failed"},
                                {"state": "failed"}]}],
                            "paths": {"c": {"local": "198.19.1.2:4500",
                                            "remote": "198.18.0.4:7000"}}}}
    text = render(status)
    assert ("  mediation: server 198.18.0.2:4500 up, server-reflexive address "
            "198.18.0.1:5057") in text
    assert "  candidates: host 198.19.1.2:4500, server-reflexive 198.18.0.1:5057" in text
    assert "  checks with c: 3 pairs (failed 2, succeeded 1)" in text
    assert ("  path: direct, candidate pair 198.19.1.2:4500 -> 198.18.0.4:7000 (chosen by "
            "the connectivity checks)") in text
