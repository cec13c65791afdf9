"""docs/python-api.md: its complete example runs as written (no root), and prints what the
document says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "python-api.md"


def test_the_documented_example_runs(tmp_path: Path) -> None:
    text = DOC.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "bob got: hello through ESP"
    assert re.fullmatch(r"state: up \| proposal: aes256gcm16-prfsha256-x25519 \| child SPIs: "
                        r"\[\('0x[0-9a-f]{8}', '0x[0-9a-f]{8}'\)\] \| received: 1 packet\(s\), "
                        r"45 octets", lines[1]), lines[1]
    # the document shows the same output (but for the SPIs)
    shown = re.search(r"It prints, with other SPIs:\n```\n(.*?)```", text, flags=re.S)
    assert shown is not None
    doc_lines = shown.group(1).splitlines()
    assert doc_lines[0] == lines[0]
    spis = re.compile(r"0x[0-9a-f]{8}")
    assert spis.sub("SPI", doc_lines[1]) == spis.sub("SPI", lines[1])
