"""Key log for Wireshark/tshark: the ``esp_sa`` and ``ikev2_decryption_table`` UAT files.

The same two files strongSwan's save-keys plugin writes, in a directory of your choosing, so a
capture of nattunnel traffic can be decrypted (docs/troubleshooting.md). The files hold keys:
they are created with mode 0600 in a directory nattunnel creates with mode 0700, and
nothing else in nattunnel ever prints keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from ..constants import ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305
from ..esp.suite import Suite

ESP_SA_FILE: Final = "esp_sa"
IKEV2_FILE: Final = "ikev2_decryption_table"

#: Wireshark's names (epan/dissectors/packet-esp.c, packet-isakmp.c)
_ESP_NAMES: Final = {
    ENCR_AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
    ENCR_CHACHA20_POLY1305: "ChaCha20 with Poly1305 [RFC7634]",
}
_IKE_NAMES: Final = {
    (ENCR_AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
    (ENCR_AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
    (ENCR_CHACHA20_POLY1305, 0): "CHACHA20-POLY1305 [RFC7634]",
}


class KeyLog:
    """Appends one line per SA to the two files under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _append(self, name: str, line: str) -> None:
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, line.encode("ascii") + b"\n")
        finally:
            os.close(fd)

    def esp_sa(self, spi: int, suite: Suite, keymat: bytes, *, src: str = "*",
               dst: str = "*", ipv6: bool = False) -> None:
        """One ESP SA (a direction). ``*`` addresses match both sides of a NAT."""
        name = _ESP_NAMES[suite.transform_id]
        family = "IPv6" if ipv6 else "IPv4"
        self._append(ESP_SA_FILE, f'"{family}","{src}","{dst}","0x{spi:08x}","{name}",'
                                  f'"0x{keymat.hex()}","NULL",""')

    def ike_sa(self, spi_i: bytes, spi_r: bytes, sk_ei: bytes, sk_er: bytes,
               transform_id: int, key_bits: int) -> None:
        """One IKE SA (both directions), as save-keys writes it: hex fields unquoted."""
        name = _IKE_NAMES[(transform_id, key_bits)]
        self._append(IKEV2_FILE, f'{spi_i.hex()},{spi_r.hex()},{sk_ei.hex()},{sk_er.hex()},'
                                 f'"{name}",,,"NONE [RFC4306]"')

    def tshark_options(self) -> list[str]:
        """``-o`` options that load these tables into tshark for one run."""
        opts = ["-o", "esp.enable_encryption_decode:TRUE"]
        for name, uat in ((ESP_SA_FILE, "esp_sa"), (IKEV2_FILE, "ikev2_decryption_table")):
            path = self.dir / name
            if path.exists():
                for line in path.read_text().splitlines():
                    opts += ["-o", f"uat:{uat}:{line}"]
        return opts
