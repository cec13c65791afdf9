"""Where a running endpoint's time goes: py-spy samples of its Python stacks, by function.

``nattunnel bench netns --profile`` samples both nattunnel endpoints (A sends, B receives)
during the TCP run. py-spy (``pip install py-spy``) reads the process from outside, so the
endpoint runs unchanged; time inside a C call (AEAD, a system call) is charged to the Python
function that made it. Only samples in which the process was running count (idle excluded),
so the shares add up to the endpoint's busy time.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: samples per second
RATE = 200
_LINE = re.compile(r":\d+\)$")


@dataclass
class Sampler:
    """A py-spy recording of one process into a raw (collapsed stacks) file."""

    role: str
    proc: subprocess.Popen[bytes]
    path: Path

    def result(self, timeout: float) -> list[tuple[float, str]]:
        """Wait for the recording; (share of samples, function) by self time, largest first."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return []
        return summarize(self.path.read_text() if self.path.exists() else "")


def available() -> bool:
    return shutil.which("py-spy") is not None


def start(role: str, pid: int, seconds: float, workdir: Path) -> Sampler:
    path = workdir / f"profile-{role}.txt"
    proc = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", str(RATE), "--format", "raw", "--nonblocking", "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return Sampler(role, proc, path)


def summarize(raw: str, top: int = 12) -> list[tuple[float, str]]:
    """Self samples by function from py-spy's raw output ("frame;frame;... count" lines)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = _LINE.sub(")", stack.rsplit(";", 1)[-1])
        counts[leaf] += int(n)
        total += int(n)
    if not total:
        return []
    return [(c / total, f) for f, c in counts.most_common(top)]
