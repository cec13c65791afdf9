"""A short run of every fuzz harness (fuzz/README.md has the long runs).

Each harness runs as a subprocess, as it would by hand, for a bounded number of inputs (and at
most a few seconds), from its seeds, with libFuzzer's artifacts in a temporary directory; exit
status 0 means no crash and no broken invariant. About a minute in all on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"

#: target -> (inputs, seconds at most); sized for ~1 minute in all (exec/s in fuzz/README.md)
BUDGET = {
    "ike_codec": (20_000, 8),
    "udpencap": (20_000, 5),
    "esp": (15_000, 8),
    "config": (8_000, 8),
    "ike_sa": (6_000, 10),
    "ike_manager": (2_000, 12),
}


@pytest.mark.parametrize("target", sorted(BUDGET))
def test_fuzz_harness_short_run(target: str, tmp_path: Path) -> None:
    runs, seconds = BUDGET[target]
    corpus = tmp_path / "corpus"
    corpus.mkdir()  # empty: the harness writes its seeds there first
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATTUNNEL_FUZZ_")}
    cmd = [sys.executable, str(FUZZ / f"fuzz_{target}.py"), f"-runs={runs}",
           f"-max_total_time={seconds}", "-seed=1", "-print_final_stats=1",
           f"-artifact_prefix={tmp_path}/", str(corpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                          env=env, cwd=tmp_path)
    tail = "\n".join(proc.stderr.splitlines()[-60:])
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert proc.returncode == 0, f"fuzz_{target} failed ({crashes}):\n{tail}"
    assert "Done" in proc.stderr or "DONE" in proc.stderr, tail
