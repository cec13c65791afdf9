"""strongSwan (charon + swanctl) as a reference IKEv2 / ESP-in-UDP peer inside the NAT lab.

Used by the interop tests (tests/interop/) and by ``nattunnel bench netns`` (through
``nattunnel.lab.peers``). docs/interop-strongswan.md says why it is set up this way and what
was verified against it; docs/benchmarks.md has the figures. In short:

- charon runs with the **userspace** IPsec stack (``kernel-libipsec`` loaded before
  ``kernel-netlink``): ESP is handled in charon through a TUN device ``ipsec0`` and is always
  UDP-encapsulated; routes to the remote traffic selectors go to table 220.
- Each charon gets a work directory holding ``strongswan.conf``, ``swanctl/`` (``swanctl.conf``,
  ``private/``, ``pubkey/``), its vici socket ``charon.vici``, its log ``charon.log`` and
  ``run/``, which is bind-mounted over ``/run`` in a private mount namespace so that several
  charons (each in its own network namespace) never share ``/run/charon.pid``.
- It is started through ``Lab.popen`` and every step of the wrapper execs, so the tracked PID
  is charon's own; it is stopped by that PID (SIGTERM, then SIGKILL), never by name.

Example::

    conn = SwanConn(name="c", local_id="hostb", remote_id="hosta", psk="secret",
                    local_ts="198.18.100.2/32", remote_ts="198.18.100.1/32")
    b = Charon.start(lab, "b", workdir / "b", conn=conn)
    ...
    b.list_sas()[0].state  # "ESTABLISHED"
    b.stop()

``swanctl`` talks to charon over the vici UNIX socket, a file-system path, so it runs in the
caller's network namespace (no ``ip netns exec`` needed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .netns import Lab
from .vici import SwanChildSa, SwanIkeSa, parse_list_sas, parse_vici_pretty

__all__ = [
    "CHARON",
    "DEFAULT_ESP_PROPOSALS",
    "DEFAULT_LOG_LEVELS",
    "DEFAULT_PLUGINS",
    "DEFAULT_PROPOSALS",
    "PLUGIN_DIR",
    "SWANCTL",
    "X509_PLUGINS",
    "Charon",
    "CharonError",
    "SwanChildSa",
    "SwanConn",
    "SwanIkeSa",
    "ed25519_private_pem",
    "ed25519_public_pem",
    "generate_ed25519_keypair",
    "parse_list_sas",
    "parse_vici_pretty",
    "render_strongswan_conf",
    "render_swanctl_conf",
    "strongswan_problems",
]

CHARON = "/usr/lib/ipsec/charon"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
SWANCTL = "swanctl"
#: Plugin order matters: the first IPsec backend wins, so kernel-libipsec precedes
#: kernel-netlink (which then only handles routes and addresses).
DEFAULT_PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gcm kdf curve25519 pem pkcs1 pkcs8 x509 pubkey vici "
    "kernel-libipsec kernel-netlink socket-default"
)
#: with certificates: CRLs are checked by ``revocation``, path length and name constraints by
#: ``constraints`` (``Charon.start(plugins=X509_PLUGINS)``; docs/certificates.md)
X509_PLUGINS = DEFAULT_PLUGINS.replace(" pubkey ", " pubkey revocation constraints ")
DEFAULT_PROPOSALS = "aes256gcm16-prfsha256-x25519"
DEFAULT_ESP_PROPOSALS = "aes256gcm16"
#: charon filelog levels (-1..4). ``net``/``esp`` at 2 log every packet and halve throughput;
#: ``ike``/``chd`` at 4 print the derived keys.
DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "ike": 2, "net": 1, "esp": 1}

SWANCTL_TIMEOUT = 15.0
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


class CharonError(RuntimeError):
    """charon or swanctl failed; the message carries the command, its output and a log tail."""


def strongswan_problems() -> list[str]:
    """Why charon cannot run here (not root, packages missing), or an empty list."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (network namespaces, TUN)")
    if not os.access(CHARON, os.X_OK):
        problems.append(f"{CHARON} missing (apt-get install strongswan-charon)")
    if shutil.which(SWANCTL, path=_SBIN_PATH) is None:
        problems.append("swanctl missing (apt-get install strongswan-swanctl)")
    for plugin, package in (
        ("kernel-libipsec", "libcharon-extra-plugins"),
        ("curve25519", "libstrongswan-extra-plugins"),
        ("openssl", "libstrongswan-standard-plugins"),
        ("gcm", "libstrongswan-standard-plugins"),
    ):
        if not Path(f"{PLUGIN_DIR}/libstrongswan-{plugin}.so").exists():
            problems.append(f"strongSwan plugin {plugin} missing (apt-get install {package})")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun missing (kernel-libipsec needs TUN)")
    return problems


# --------------------------------------------------------------------------- keys


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``mode`` from the start (replacing an existing file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ed25519_private_pem(key: Ed25519PrivateKey | bytes) -> bytes:
    """PKCS#8 PEM of an Ed25519 private key (a key object or its raw 32-byte seed)."""
    if isinstance(key, bytes):
        key = Ed25519PrivateKey.from_private_bytes(key)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ed25519_public_pem(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> bytes:
    """SubjectPublicKeyInfo PEM of an Ed25519 public key (object, private key, or raw 32 bytes)."""
    if isinstance(key, bytes):
        key = Ed25519PublicKey.from_public_bytes(key)
    elif isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_ed25519_keypair(private_path: Path, public_path: Path) -> bytes:
    """Write a fresh Ed25519 key pair: PKCS#8 PEM private key (mode 0600) and SPKI PEM public
    key (0644). Returns the raw 32-byte public key."""
    key = Ed25519PrivateKey.generate()
    _write_private(Path(private_path), ed25519_private_pem(key))
    _write_private(Path(public_path), ed25519_public_pem(key), 0o644)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------- configuration


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _list(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


@dataclass
class SwanConn:
    """One swanctl connection with one CHILD_SA (tunnel mode), rendered as in
    docs/interop-strongswan.md.

    ``auth="psk"`` needs ``psk``; ``auth="pubkey"`` needs ``private_key`` (PKCS#8 PEM of our
    Ed25519 key), ``local_pubkey`` (our SPKI PEM) and ``remote_pubkey`` (the peer's SPKI PEM);
    ``Charon.start`` copies them into ``swanctl/private`` and ``swanctl/pubkey``. With
    certificates, ``local_extra={"certs": "NAME.pem"}``, ``remote_extra={"cacerts":
    "peer-root.pem"}`` and ``Charon.start(files=pki.swanctl_files("NAME", peer_pki),
    plugins=X509_PLUGINS)`` (``nattunnel.lab.pki``); nattunnel's CERTREQ names the CAs, so
    charon's default ``send_cert = ifasked`` sends its certificate.
    Durations are strongSwan strings (``"30s"``, ``"1h"``); None leaves charon's default.
    """

    name: str = "c"
    local_addrs: str | Sequence[str] = "%any"
    remote_addrs: str | Sequence[str] = "%any"
    local_id: str = "hosta"
    remote_id: str = "hostb"
    auth: Literal["psk", "pubkey"] = "psk"
    psk: str | None = None
    private_key: Path | None = None
    local_pubkey: Path | None = None
    remote_pubkey: Path | None = None
    proposals: str | Sequence[str] = DEFAULT_PROPOSALS
    esp_proposals: str | Sequence[str] = DEFAULT_ESP_PROPOSALS
    local_ts: str | Sequence[str] = "dynamic"
    remote_ts: str | Sequence[str] = "dynamic"
    child_name: str | None = None  # default: same as ``name``
    encap: bool = True
    mobike: bool = True
    dpd_delay: str | None = "30s"
    start_action: str = "none"  # none | trap | start
    dpd_action: str | None = None  # clear | trap | restart
    close_action: str | None = None
    rekey_time: str | None = None  # IKE_SA
    reauth_time: str | None = None
    over_time: str | None = None
    child_rekey_time: str | None = None
    child_life_time: str | None = None
    version: int = 2
    local_port: int | None = None
    remote_port: int | None = None
    #: extra ``key = value`` lines for the connection and for the child section
    extra: Mapping[str, str] = field(default_factory=dict)
    child_extra: Mapping[str, str] = field(default_factory=dict)
    #: extra ``key = value`` lines for the ``local`` and ``remote`` sections (certs, cacerts,
    #: another auth round's settings ...)
    local_extra: Mapping[str, str] = field(default_factory=dict)
    remote_extra: Mapping[str, str] = field(default_factory=dict)
    #: more children of this connection, by name: each tunnel mode with ``esp_proposals``
    #: and these ``key = value`` lines (``local_ts``, ``remote_ts``, ``start_action`` ...)
    more_children: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def child(self) -> str:
        return self.child_name or self.name

    def local_key_file(self) -> str:
        return f"{self.name}-local.pem"

    def local_pub_file(self) -> str:
        return f"{self.name}-local.pub"

    def remote_pub_file(self) -> str:
        return f"{self.name}-remote.pub"

    def validate(self) -> None:
        if self.auth == "psk":
            if not self.psk:
                raise ValueError(f"connection {self.name}: auth=psk needs psk")
            if '"' in self.psk or "\\" in self.psk:
                raise ValueError(f"connection {self.name}: psk must not contain quotes")
        elif self.auth == "pubkey" and "certs" in self.local_extra:
            pass  # X.509: the certificate and key files come through Charon.start(files=)
        elif self.auth == "pubkey":
            missing = [
                n
                for n in ("private_key", "local_pubkey", "remote_pubkey")
                if getattr(self, n) is None
            ]
            if missing:
                raise ValueError(f"connection {self.name}: auth=pubkey needs {', '.join(missing)}")
        else:
            raise ValueError(f"connection {self.name}: auth must be psk or pubkey")

    def render_connection(self) -> str:
        """The ``connections { <name> { ... } }`` body of this connection."""
        self.validate()
        opts: list[tuple[str, str | None]] = [
            ("version", str(self.version)),
            ("proposals", _list(self.proposals)),
            ("local_addrs", _list(self.local_addrs)),
            ("remote_addrs", _list(self.remote_addrs)),
            ("local_port", None if self.local_port is None else str(self.local_port)),
            ("remote_port", None if self.remote_port is None else str(self.remote_port)),
            ("encap", _yn(self.encap)),
            ("mobike", _yn(self.mobike)),
            ("dpd_delay", self.dpd_delay),
            ("rekey_time", self.rekey_time),
            ("reauth_time", self.reauth_time),
            ("over_time", self.over_time),
            *self.extra.items(),
        ]
        lines = [f"  {self.name} {{"]
        lines += [f"    {k} = {v}" for k, v in opts if v is not None]
        pub = self.auth == "pubkey"
        for side, ident, keyfile in (
            ("local", self.local_id, self.local_pub_file()),
            ("remote", self.remote_id, self.remote_pub_file()),
        ):
            lines.append(f"    {side} {{")
            lines.append(f"      auth = {self.auth}")
            lines.append(f"      id = {ident}")
            if pub and "certs" not in self.local_extra:
                lines.append(f"      pubkeys = {keyfile}")
            extra = self.local_extra if side == "local" else self.remote_extra
            lines += [f"      {k} = {v}" for k, v in extra.items()]
            lines.append("    }")
        child_opts: list[tuple[str, str | None]] = [
            ("mode", "tunnel"),
            ("esp_proposals", _list(self.esp_proposals)),
            ("local_ts", _list(self.local_ts)),
            ("remote_ts", _list(self.remote_ts)),
            ("rekey_time", self.child_rekey_time),
            ("life_time", self.child_life_time),
            ("start_action", self.start_action),
            ("dpd_action", self.dpd_action),
            ("close_action", self.close_action),
            *self.child_extra.items(),
        ]
        lines.append("    children {")
        lines.append(f"      {self.child} {{")
        lines += [f"        {k} = {v}" for k, v in child_opts if v is not None]
        lines.append("      }")
        for name, keys in self.more_children.items():
            more = {"mode": "tunnel", "esp_proposals": _list(self.esp_proposals), **keys}
            lines += [f"      {name} {{", *(f"        {k} = {v}" for k, v in more.items()),
                      "      }"]
        lines += ["    }", "  }"]
        return "\n".join(lines) + "\n"

    def render_secret(self) -> str:
        if self.auth != "psk":
            return ""
        return (
            f"  ike-{self.name} {{\n"
            f"    id-1 = {self.local_id}\n"
            f"    id-2 = {self.remote_id}\n"
            f'    secret = "{self.psk}"\n'
            f"  }}\n"
        )


def render_swanctl_conf(conns: Sequence[SwanConn], sections: str = "") -> str:
    """swanctl.conf for ``conns`` (PSKs go to ``secrets``; private keys are loaded from
    ``swanctl/private`` by ``--load-all``), then ``sections`` as written (``pools { ... }``,
    ``authorities { ... }``)."""
    out = "connections {\n" + "".join(c.render_connection() for c in conns) + "}\n"
    out += "secrets {\n" + "".join(c.render_secret() for c in conns) + "}\n"
    return out + sections


def render_strongswan_conf(
    workdir: Path,
    *,
    plugins: str = DEFAULT_PLUGINS,
    log_levels: Mapping[str, int] = DEFAULT_LOG_LEVELS,
    port: int = 500,
    port_nat_t: int = 4500,
    keep_alive: str = "20s",
    retransmit_tries: int = 3,
    settings: Mapping[str, str] | None = None,
) -> str:
    """strongswan.conf for a charon whose files live in ``workdir``. ``settings`` adds
    ``key = value`` lines to the ``charon`` section (e.g. ``retransmit_timeout``)."""
    levels = "\n".join(f"        {k} = {v}" for k, v in log_levels.items())
    extra = "".join(f"  {k} = {v}\n" for k, v in (settings or {}).items())
    return (
        "charon {\n"
        f"  load = {plugins}\n"
        f"  port = {port}\n"
        f"  port_nat_t = {port_nat_t}\n"
        f"  keep_alive = {keep_alive}\n"
        f"  retransmit_tries = {retransmit_tries}\n"
        f"{extra}"
        "  plugins {\n"
        f"    vici {{\n      socket = unix://{workdir}/charon.vici\n    }}\n"
        "  }\n"
        "  filelog {\n"
        "    f {\n"
        f"      path = {workdir}/charon.log\n"
        "      time_format = %H:%M:%S\n"
        "      ike_name = yes\n"
        "      flush_line = yes\n"
        "      append = yes\n"
        f"{levels}\n"
        "    }\n"
        "  }\n"
        "}\n"
        # swanctl reads the same file (STRONGSWAN_CONF): the plugins it needs to parse keys
        "swanctl {\n"
        "  load = pem pkcs1 pkcs8 x509 pubkey openssl curve25519 random nonce sha2\n"
        "}\n"
    )


# --------------------------------------------------------------------------- charon


@dataclass
class Charon:
    """One charon in one lab namespace. Create with ``Charon.start``."""

    lab: Lab
    role: str
    workdir: Path
    conns: list[SwanConn]
    proc: subprocess.Popen[Any] | None = None
    strongswan_conf_text: str = ""
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    #: appended to swanctl.conf; files under swanctl/ (see ``start``)
    sections: str = ""
    files: dict[str, bytes] = field(default_factory=dict)

    # ------------------------------------------------------------------ paths

    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def swanctl_dir(self) -> Path:
        return self.workdir / "swanctl"

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "charon.stdout"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        lab: Lab,
        role: str,
        workdir: Path | str,
        *,
        conn: SwanConn | Sequence[SwanConn],
        plugins: str = DEFAULT_PLUGINS,
        log_levels: Mapping[str, int] = DEFAULT_LOG_LEVELS,
        port: int = 500,
        port_nat_t: int = 4500,
        keep_alive: str = "20s",
        retransmit_tries: int = 3,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 10.0,
        load: bool = True,
        inner_addrs: Sequence[str] = (),
        sections: str = "",
        files: Mapping[str, bytes] | None = None,
    ) -> Charon:
        """Write the configuration into ``workdir`` (created if needed), start charon in
        ``role``'s namespace, wait until vici answers, then ``swanctl --load-all`` (unless
        ``load`` is False).

        ``inner_addrs`` (e.g. ``["198.18.100.1/32"]``) are added to ``lo`` in the namespace
        first: charon installs the route to the remote traffic selector (table 220, dev
        ipsec0) with ``src`` = a local address inside the local TS, and without one the route
        fails and the CHILD_SA is refused (the responder answers TS_UNACCEPTABLE).

        ``sections`` is appended to swanctl.conf as written (``pools { ... }``, ``authorities
        { ... }``); ``files`` maps paths under ``swanctl/`` (``"x509ca/ca.pem"``,
        ``"private/gw.key"``) to their contents, written 0600 under ``private/`` and 0644
        elsewhere."""
        for addr in inner_addrs:
            lab.exec(role, "ip", "addr", "replace", addr, "dev", "lo")
        workdir = Path(workdir).resolve()
        if len(str(workdir / "charon.vici")) > _UNIX_PATH_MAX:
            raise CharonError(f"work directory path too long for a UNIX socket: {workdir}")
        conns = [conn] if isinstance(conn, SwanConn) else list(conn)
        names = [c.name for c in conns]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate connection names: {names}")
        self = cls(lab, role, workdir, conns, start_timeout=start_timeout)
        self.sections = sections
        self.files = dict(files or {})
        self.strongswan_conf_text = render_strongswan_conf(
            workdir,
            plugins=plugins,
            log_levels=log_levels,
            port=port,
            port_nat_t=port_nat_t,
            keep_alive=keep_alive,
            retransmit_tries=retransmit_tries,
            settings=settings,
        )
        self.write_config()
        self._launch()
        if load:
            self.load_all()
        return self

    def write_config(self) -> None:
        """(Re)write strongswan.conf, swanctl.conf and the key files."""
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "run").mkdir(exist_ok=True)
        for sub in ("private", "pubkey", "x509", "x509ca", "rsa", "ecdsa", "pkcs8"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.swanctl_dir / "private", 0o700)
        self.conf_path.write_text(self.strongswan_conf_text)
        for c in self.conns:
            c.validate()
            if c.auth == "pubkey" and "certs" not in c.local_extra:
                assert c.private_key and c.local_pubkey and c.remote_pubkey
                _write_private(
                    self.swanctl_dir / "private" / c.local_key_file(),
                    Path(c.private_key).read_bytes(),
                )
                for src, dst in (
                    (c.local_pubkey, c.local_pub_file()),
                    (c.remote_pubkey, c.remote_pub_file()),
                ):
                    _write_private(self.swanctl_dir / "pubkey" / dst, Path(src).read_bytes(), 0o644)
        for rel, data in self.files.items():
            target = self.swanctl_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_private(target, data, 0o600 if rel.startswith("private/") else 0o644)
        _write_private(self.swanctl_dir / "swanctl.conf",
                       render_swanctl_conf(self.conns, self.sections).encode())

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.vici_path.unlink()
        script = (
            'mount --bind "$0/run" /run && '
            'exec env STRONGSWAN_CONF="$0/strongswan.conf" "$1"'
        )
        with self.stdout_path.open("ab") as out:
            self.proc = self.lab.popen(
                self.role,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                str(self.workdir),
                CHARON,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"charon in {self.role} exited with {self.proc.returncode}\n{self._tail()}"
                )
            if self.vici_path.exists():
                cp = self._swanctl_raw(["--stats"], timeout=5.0)
                if cp.returncode == 0:
                    return
                last = cp.stderr.strip() or cp.stdout.strip()
            if time.monotonic() >= deadline:
                self.stop()
                raise CharonError(
                    f"charon in {self.role}: vici not ready after {self.start_timeout}s "
                    f"({last})\n{self._tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        """Stop charon by its PID: SIGTERM, wait, SIGKILL. Idempotent. Returns the exit code."""
        if self.proc is None:
            return None
        return self.lab.stop(self.proc, timeout=self.stop_timeout)

    def restart(self, *, load: bool = True) -> None:
        """Stop, rewrite the configuration (``self.conns`` may have been changed), start."""
        self.stop()
        self.write_config()
        self._launch()
        if load:
            self.load_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ swanctl

    def _swanctl_raw(
        self, args: Sequence[str], timeout: float = SWANCTL_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        if not args:
            raise ValueError("swanctl needs a command word")
        exe = shutil.which(SWANCTL, path=_SBIN_PATH) or SWANCTL
        # the command word first, then --uri (swanctl parses options per command)
        argv = [exe, args[0], "--uri", self.uri, *args[1:]]
        env = dict(
            os.environ, SWANCTL_DIR=str(self.swanctl_dir), STRONGSWAN_CONF=str(self.conf_path)
        )
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(
                argv, 124, stdout=str(exc.stdout or ""), stderr=f"timed out after {timeout}s"
            )

    def swanctl(
        self, *args: str, timeout: float = SWANCTL_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl <command> --uri unix://... <args>`` against this charon. The first
        argument is the command word (``--list-sas``, ``--initiate`` ...)."""
        cp = self._swanctl_raw(list(args), timeout=timeout)
        if check and cp.returncode != 0:
            raise CharonError(
                f"swanctl {' '.join(args)} failed (rc={cp.returncode}) in {self.role}\n"
                f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}\n{self._tail()}"
            )
        return cp

    def load_all(self) -> None:
        self.swanctl("--load-all", "--noprompt")

    def initiate(self, child: str | None = None, *, ike: str | None = None,
                 timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """``swanctl --initiate --child CHILD`` (blocking, bounded by ``timeout``)."""
        child = child or self.conns[0].child
        args = ["--initiate", "--child", child, "--timeout", str(max(1, int(timeout)))]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout + 5)

    def terminate_ike(self, name: str | None = None, *, timeout: float = 10.0,
                      force: bool = False, check: bool = True
                      ) -> subprocess.CompletedProcess[str]:
        """``swanctl --terminate --ike NAME``; ``force`` deletes the IKE_SA at once without
        waiting for the peer's answer (for a peer that is gone or was restarted). swanctl
        fails if no such IKE_SA exists (``check=False`` to ignore)."""
        name = name or self.conns[0].name
        wait = ["--force"] if force else ["--timeout", str(max(1, int(timeout)))]
        return self.swanctl("--terminate", "--ike", name, *wait, timeout=timeout + 5,
                            check=check)

    def terminate_child(self, name: str | None = None, *, timeout: float = 10.0
                        ) -> subprocess.CompletedProcess[str]:
        name = name or self.conns[0].child
        return self.swanctl("--terminate", "--child", name,
                            "--timeout", str(max(1, int(timeout))), timeout=timeout + 5)

    def rekey_child(self, name: str | None = None) -> subprocess.CompletedProcess[str]:
        """Start a CHILD_SA rekey (asynchronous in charon; see ``wait_child_rekeyed``)."""
        return self.swanctl("--rekey", "--child", name or self.conns[0].child)

    def rekey_ike(self, name: str | None = None) -> subprocess.CompletedProcess[str]:
        """Start an IKE_SA rekey (asynchronous in charon)."""
        return self.swanctl("--rekey", "--ike", name or self.conns[0].name)

    def list_sas(self, ike: str | None = None) -> list[SwanIkeSa]:
        """The current IKE_SAs (and their CHILD_SAs), optionally only those named ``ike``."""
        args = ["--list-sas", "--pretty"]
        if ike:
            args += ["--ike", ike]
        return parse_list_sas(self.swanctl(*args).stdout)

    def ike_sa(self, name: str | None = None, state: str | None = "ESTABLISHED"
               ) -> SwanIkeSa | None:
        name = name or self.conns[0].name
        for sa in self.list_sas(name):
            if sa.name == name and (state is None or sa.state == state):
                return sa
        return None

    def child_sa(self, child: str | None = None, ike: str | None = None) -> SwanChildSa | None:
        """The INSTALLED CHILD_SA ``child`` of the ESTABLISHED IKE_SA ``ike``, or None."""
        child = child or self.conns[0].child
        sa = self.ike_sa(ike)
        return None if sa is None else sa.child(child)

    def wait_established(self, ike: str | None = None, child: str | None = None,
                         timeout: float = 15.0) -> tuple[SwanIkeSa, SwanChildSa]:
        """Wait until the IKE_SA is ESTABLISHED with the CHILD_SA INSTALLED."""
        ike = ike or self.conns[0].name
        child = child or self.conns[0].child
        deadline = time.monotonic() + timeout
        while True:
            sa = self.ike_sa(ike)
            c = None if sa is None else sa.child(child)
            if sa is not None and c is not None:
                return sa, c
            if time.monotonic() >= deadline:
                raise CharonError(
                    f"{self.role}: {ike}/{child} not established after {timeout}s\n{self._tail()}"
                )
            time.sleep(0.2)

    def wait_child_rekeyed(self, old: SwanChildSa, child: str | None = None,
                           timeout: float = 15.0, *, old_gone: bool = False) -> SwanChildSa:
        """Wait until an INSTALLED CHILD_SA with SPIs other than ``old``'s exists and the old
        one is no longer INSTALLED; return the new one. charon lists the old one as DELETED
        for ``charon.delete_rekeyed_delay`` (5 s) after a rekey (its inbound SA still accepts
        late packets); ``old_gone=True`` also waits until it has disappeared."""
        child = child or old.name
        deadline = time.monotonic() + timeout
        while True:
            sa = self.ike_sa(None, state="ESTABLISHED")
            kids = [] if sa is None else [c for c in sa.children if c.name == child]
            new = [c for c in kids if c.state == "INSTALLED" and c.spi_in != old.spi_in
                   and c.spi_out != old.spi_out]
            still_old = [c for c in kids if c.spi_in == old.spi_in
                         and (old_gone or c.state == "INSTALLED")]
            if new and not still_old:
                return new[0]
            if time.monotonic() >= deadline:
                raise CharonError(
                    f"{self.role}: CHILD_SA {child} not rekeyed after {timeout}s "
                    f"(children: {kids})\n{self._tail()}"
                )
            time.sleep(0.2)

    # ------------------------------------------------------------------ logs

    def log(self) -> str:
        """charon's filelog (plus anything it printed on stdout/stderr)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.stdout_path.exists():
            out = self.stdout_path.read_text(errors="replace")
            if out.strip():
                text += "\n--- stdout/stderr ---\n" + out
        return text

    def _tail(self, lines: int = 40) -> str:
        return f"--- {self.role} charon log (tail) ---\n" + "\n".join(
            self.log().splitlines()[-lines:]
        )
