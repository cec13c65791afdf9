"""Many idle peers on one endpoint (no root): timers wake per deadline that falls due, never
once per peer per tick, and every peer's keepalives go out. A small ``bench scale`` run."""

from __future__ import annotations

import json

from nattunnel.bench.scale import ScaleParams, run_scale
from nattunnel.cli.main import main


async def test_idle_wakeups_follow_due_deadlines_and_every_peer_keeps_alive():
    # 100 manual peers (keepalive 1 s, phases spread) + 100 IKE peers (DPD 1.5 s), 3 s idle
    p = ScaleParams(peers=200, seconds=3.0, keepalive_interval=1.0, dpd_interval=1.5,
                    setup_timeout=30)
    r = await run_scale(p)
    assert r.ike_established == 100 and r.ike_sas == 100
    assert r.ike_up_after_idle == 100 and r.peer_ike_up_after_idle == 100
    # every manual peer sent its keepalives during the idle time, and they all arrived
    assert r.min_keepalives_per_peer >= 2
    assert r.max_keepalives_per_peer <= 4
    assert r.keepalives_sent >= 100 * 2
    assert r.sink_keepalives_received == r.keepalives_sent_total
    # DPD ran: B sent liveness checks (or answered A's, which refreshes its own deadline)
    assert r.ike_requests_sent + r.ike_received > 0
    # the structural property: a wakeup only when a keepalive or an IKE request falls due
    # (several may share one wakeup), plus a little slack for a timer that fires a hair early
    assert 0 < r.wakeups <= r.due_deadlines + 5
    # ... which here is well below one wakeup per peer per second
    assert r.wakeups < p.peers * p.seconds * 0.75


def test_bench_scale_command_json(capsys):
    assert main(["bench", "scale", "--peers", "6", "--seconds", "0.5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"]["peers"] == 6 and r["ike_established"] == 3
    assert r["wall_s"] >= 0.5 and r["cpu_s"] >= 0
    assert r["rss_before"] > 0 and r["heap_per_manual_peer"] > 0 and r["heap_per_ike_peer"] > 0
    for key in ("cpu_percent", "wakeups_per_s", "rss_per_peer", "heap_per_peer"):
        assert key in r


def test_bench_scale_refuses_bad_arguments(capsys):
    assert main(["bench", "scale", "--peers", "1"]) == 2
    assert main(["bench", "scale", "--seconds", "0"]) == 2
    assert "--peers must be" in capsys.readouterr().err
