"""``nattunnel bench traversal``: the argument checks (no root), and a short run in the
lab (root): every figure present and sane, the move to the direct path losing at most a
ping or two at 10 pps, the fallback within 10 s, the idle tunnel kept past the NAT's
mapping timeout by keepalives."""

from __future__ import annotations

import pytest

from nattunnel.bench.traversal import TraversalFigures, report, run_traversal
from nattunnel.cli.main import main
from tests.lab.traversal_support import require


@pytest.mark.parametrize("argv", [["--keepalive", "40"], ["--rounds", "0"],
                                  ["--mapping-timeout", "1"], ["--idle", "-1"],
                                  ["--delay-ms", "-1"], ["--delay-ms", "1001"]])
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "traversal", *argv]) == 2
    assert "nattunnel bench traversal:" in capsys.readouterr().err


def test_report_of_an_empty_run() -> None:
    assert report(TraversalFigures(0)) == "\n"
    text = report(TraversalFigures(1, first_packet_direct=[1.0], ready_direct=[0.5]))
    assert text.startswith("first packet, direct               median 1.00 s, max 1.00 s")
    assert "relay" not in text and "idle" not in text
    text = report(TraversalFigures(10, first_packet_mediated=[float(i) for i in range(1, 11)],
                                   ready_mediated=[0.5] * 10, delay_ms=50))
    assert "  p50 / p95                        5.50 s / 10.00 s, one-way delay 50 ms" in text


@pytest.mark.root
def test_short_run() -> None:
    require()
    fig = run_traversal(seconds=1, idle=8, mapping_timeout=4, keepalive=1.5, rounds=1,
                        delay_ms=50)
    print("\n" + report(fig))
    assert len(fig.first_packet_direct) == len(fig.first_packet_relay) == 1
    assert 0 < fig.ready_direct[0] <= fig.first_packet_direct[0] < 10
    assert 0 < fig.ready_relay[0] <= fig.first_packet_relay[0] < 10
    assert 0 < fig.ready_mediated[0] <= fig.first_packet_mediated[0] < 10  # 50 ms each way
    assert fig.to_direct_s is not None and fig.to_direct_s < 10
    assert fig.lost_to_direct is not None and 0 <= fig.lost_to_direct <= 2
    assert fig.to_relay_s is not None and fig.to_relay_s < 10
    assert fig.tcp_direct_mbps and fig.tcp_relay_mbps and fig.tcp_relay_mbps > 1
    # each throughput run's diagnostics: retransmissions, coturn's drops, the CPU by process
    assert fig.tcp_direct_retransmits is not None and fig.tcp_direct_retransmits >= 0
    assert fig.tcp_relay_retransmits is not None and fig.tcp_relay_retransmits >= 0
    assert fig.relay_rcvbuf_drops is not None and fig.relay_rcvbuf_drops >= 0
    assert {"A", "E", "coturn", "machine"} <= set(fig.cpu_relay), fig.cpu_relay
    assert fig.cpu_relay["A"] > 0 and fig.cpu_relay["coturn"] > 0, fig.cpu_relay
    assert {"A", "E", "machine"} <= set(fig.cpu_direct) and fig.cpu_direct["A"] > 0
    assert fig.idle_kept, fig.idle_note
