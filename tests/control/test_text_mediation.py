"""``nattunnel show`` (control/text.py) on a mediation server: the peers registered and the
server's counters; and a mediated peer's last mediation errors."""

from __future__ import annotations

from nattunnel.control.text import render


def _status(**more: object) -> dict[str, object]:
    return {"version": "x", "listen": ["0.0.0.0:4500"], "uptime": 1.0, "peers": {}, **more}


def test_a_mediation_server_line() -> None:
    text = render(_status(mediation_server={
        "registered": {"hostc": "198.18.0.4:4500", "hosta": "198.18.0.1:4500"},
        "waiting": {}, "stats": {"registered": 2, "forwarded": 2, "failed": 0}}))
    assert ("  mediation server: 2 registered (hosta at 198.18.0.1:4500, hostc at "
            "198.18.0.4:4500); forwarded 2, registered 2") in text
    text = render(_status(mediation_server={"registered": {}, "stats": {}}))
    assert "  mediation server: 0 registered\n" in text
    assert "mediation server" not in render(_status())


def test_the_mediation_clients_last_errors() -> None:
    text = render(_status(mediation={"server": "198.18.0.2:4500", "up": False,
                                     "last_error": {"c": "PathFailed(name='c', reason='x')"}}))
    assert "  mediation last error (c): PathFailed(name='c', reason='x')" in text
