"""The TOML configuration of a tunnel endpoint: manual SAs or IKEv2 peers (docs/config.md).

``load_config(path)`` reads a file, ``parse_config(text, base_dir)`` a string; both return a
frozen ``Config`` or raise ``ConfigError``. Everything is checked at load time, key files
included, so that an endpoint never starts with half a configuration:

- TOML syntax (with tomllib's line and column), unknown keys (with a close-match suggestion),
  missing keys, types (a TOML boolean is never an integer), ranges;
- addresses: IP literals only (no DNS at load time), IPv6 in brackets, ports 1..65535;
- across peers: unique names, unique ``spi_in``, no overlapping ``allowed_ips``, and no two
  key files holding the same keying material (two SAs on one key and salt would reuse AEAD
  nonces); no two IKE peers with the same ``remote_id``;
- strings before anything uses them: identities (``Identity.parse``), paths (no NUL, at most
  PATH_MAX), no IPv6 zones, so that no bad value escapes as another exception;
- ``[limits]``: the IKE flood bounds, an ``ike.manager.IkeLimits`` (``Config.limits``).

A ``[[peer]]`` is either manual (``spi_in``, ``spi_out``, ``key_in``, ``key_out``: static keys)
or IKE-managed (``auth = "psk"`` or ``"pubkey"``: IKEv2 negotiates the child SAs); a field of
the other kind in a peer is an error naming that field. An IKE peer's ``PeerConfig.ike`` is an
``ike.config.IkeConfig`` whose repr never shows its pre-shared key.

Every ConfigError message has the form ``FILE: FIELD: problem``, where FIELD is a path such as
``peer[1].spi_in`` or ``interface.addresses[0]`` (peers are numbered from 0, in file order).
No message ever contains key material: key files are read only by ``keys.load_keymat``,
``keys.load_psk``, ``keys.load_ed25519_private`` and ``keys.load_ed25519_public``, whose errors
never hold key bytes, and values are echoed only for fields that are not keys.

The modules: ``model`` (the frozen dataclasses and limits), ``fields`` (ConfigError and the
generic TOML field readers), ``parser`` (the top level, ``[interface]``, ``[limits]``,
``listen``; ``load_config``, ``parse_config``), ``peers`` (``[[peer]]``, key files, checks
across peers), ``ike_settings`` (an IKE peer's fields and credentials), ``certfields``
(``certs``, ``cacerts``, ``crls``) and ``roadwarrior`` (``vips``, ``pools``,
``[pools.NAME]``); strongSwan's proposal syntax is read by ``ike.grammar``. Everything a
caller needs is re-exported here.

May import the base modules (``constants``, ``addr``), ``esp``, ``tunnel``, ``ike`` and
``keys``; never ``io``, ``app``, ``cli``, ``lab`` or ``bench``.
"""

from __future__ import annotations

from ..addr import HostPort, Network, format_addr
from ..ike.grammar import parse_esp_proposal, parse_ike_proposal
from ..tunnel.peer import KeepaliveMode
from .fields import ConfigError
from .model import (
    DEFAULT_DPD_INTERVAL,
    DEFAULT_IKE_REKEY_TIME,
    DEFAULT_INTERFACE_NAME,
    DEFAULT_LISTEN,
    DEFAULT_REKEY_TIME,
    DEFAULT_SUITE,
    DEFAULT_UNDERLAY_MTU,
    IFNAME_MAX,
    INNER_MTU_MIN_IPV4,
    INNER_MTU_MIN_IPV6,
    LIMIT_COUNT_MAX,
    PATH_MAX,
    PEER_NAME_MAX,
    SPI_MAX,
    SPI_MIN,
    TFC_PAD_MAX,
    UNDERLAY_MTU_MAX,
    UNDERLAY_MTU_MIN,
    Config,
    IkeAuth,
    InterfaceConfig,
    IPAddress,
    IPInterface,
    PeerConfig,
)
from .parser import config_from_dict, load_config, parse_config

__all__ = [
    "DEFAULT_DPD_INTERVAL",
    "DEFAULT_IKE_REKEY_TIME",
    "DEFAULT_INTERFACE_NAME",
    "DEFAULT_LISTEN",
    "DEFAULT_REKEY_TIME",
    "DEFAULT_SUITE",
    "DEFAULT_UNDERLAY_MTU",
    "IFNAME_MAX",
    "INNER_MTU_MIN_IPV4",
    "INNER_MTU_MIN_IPV6",
    "LIMIT_COUNT_MAX",
    "PATH_MAX",
    "PEER_NAME_MAX",
    "SPI_MAX",
    "SPI_MIN",
    "TFC_PAD_MAX",
    "UNDERLAY_MTU_MAX",
    "UNDERLAY_MTU_MIN",
    "Config",
    "ConfigError",
    "HostPort",
    "IPAddress",
    "IPInterface",
    "IkeAuth",
    "InterfaceConfig",
    "KeepaliveMode",
    "Network",
    "PeerConfig",
    "config_from_dict",
    "format_addr",
    "load_config",
    "parse_config",
    "parse_esp_proposal",
    "parse_ike_proposal",
]
