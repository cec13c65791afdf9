"""One ``[[peer]]`` for many road-warrior clients (docs/road-warrior.md, "One [[peer]] for
every client"): a template peer whose ``remote_id`` is ``%any`` or a strongSwan-style
wildcard (``*@example.org``, ``*.example.org``, a DN with ``*`` values such as
``C=CH, O=Lab, CN=*``), and the instances made of it, one per client identity.

- ``IdentityPattern`` is the template's ``remote_id``: an ``Identity`` that never goes on
  the wire and ``matches`` the identities it stands for;
- ``Templates`` finds the template for an identity that no peer names exactly
  (``lookup``: the most specific pattern first, ``%any`` last; our ``local_id`` must match
  the IDr the client asked for), and makes the instance's configuration: the template's,
  with the client's identity and its own name ``TEMPLATE[IDENTITY]``. Making it keeps
  nothing: an instance exists only once its IKE SA authenticated (``RoadWarriorManager``,
  ``nattunnel.ike.roadwarrior``, registers it then), so that an unauthenticated sender
  cannot create state;
- the instances it registered, by name, with their template and identity, bounded by the
  template's ``max_clients`` and the size of its pools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cryptography import x509

from ..constants import IdType
from .certs import format_dn, parse_dn
from .config import Identity, IkeConfig

#: the ID type of ``%any``: 0 is reserved in RFC 7296 section 3.5, so it never comes from
#: the wire
ANY_TYPE = 0


class IdentityPattern(Identity):
    """A template's ``remote_id``: ``%any`` (every identity), ``*@DOMAIN`` (every e-mail
    identity in DOMAIN), ``*.DOMAIN`` (every FQDN below DOMAIN), or a DN with ``*`` as some
    RDN values (any value there; the other RDNs as written, in that order). It equals only
    itself: no identity from the wire compares equal to it."""

    def matches(self, other: Identity) -> bool:
        if self.id_type == ANY_TYPE:
            return True
        if other.id_type != self.id_type or isinstance(other, IdentityPattern):
            return False
        if self.id_type == IdType.DER_ASN1_DN:
            return self.name is not None and other.name is not None \
                and _dn_matches(self.name, other.name)
        suffix = self.data[1:].lower()  # strongSwan compares these without case
        return len(other.data) > len(suffix) and other.data.lower().endswith(suffix)

    @property
    def wildcards(self) -> int:
        """How much the pattern leaves open (the lookup tries the fewest first)."""
        if self.id_type == ANY_TYPE:
            return 1 << 16
        if self.name is not None:
            return sum(a.value == "*" for a in self.name)
        return 1

    def __str__(self) -> str:
        if self.id_type == ANY_TYPE:
            return "%any"
        if self.name is not None:
            return format_dn(self.name)
        return self.data.decode("ascii", "replace")


def _dn_matches(pattern: x509.Name, name: x509.Name) -> bool:
    mine = [a for rdn in pattern.rdns for a in rdn]
    theirs = [a for rdn in name.rdns for a in rdn]
    if len(mine) != len(theirs):
        return False
    return all(p.oid == a.oid and p.value in ("*", a.value)
               for p, a in zip(mine, theirs, strict=True))


ANY_ID = IdentityPattern(ANY_TYPE, b"%any")


def parse_pattern(text: str) -> IdentityPattern | None:
    """The pattern that ``text`` writes (``%any``, ``*@DOMAIN``, ``*.DOMAIN``, a DN with a
    ``*`` value), or None if it is a plain identity. ValueError says what is wrong."""
    s = text.strip()
    if s == "%any":
        return ANY_ID
    if s.startswith("%"):
        raise ValueError("the only %-identity is %any")
    if s.startswith(("*@", "*.")):
        rest = s[2:]
        if not rest or "*" in rest or not rest.isascii() or any(c.isspace() for c in rest):
            raise ValueError("a wildcard identity is *@DOMAIN or *.DOMAIN: one leading '*', "
                             "then a printable ASCII domain")
        kind = IdType.RFC822_ADDR if s[1] == "@" else IdType.FQDN
        return IdentityPattern(kind, s.encode("ascii"))
    if "*" not in s:
        return None
    if "=" not in s:
        raise ValueError("'*' goes at the start (*@DOMAIN, *.DOMAIN) or as a whole RDN value "
                         "of a distinguished name (CN=*)")
    name = parse_dn(s.removeprefix("asn1dn:"))
    for a in name:
        if "*" in str(a.value) and a.value != "*":
            raise ValueError(f"'*' must be a whole RDN value (CN=*), not part of "
                             f"{a.value!r}")
    plain = Identity.from_name(name)
    return IdentityPattern(plain.id_type, plain.data, name)


@dataclass(frozen=True)
class Instance:
    """One client of a template: its name, the template's name and the client's identity."""

    name: str
    template: str
    identity: Identity


def instance_name(template: str, identity: Identity) -> str:
    return f"{template}[{identity}]"


class Templates:
    """The template peers of a manager and the instances registered for them."""

    def __init__(self) -> None:
        #: template peers' configurations, by name, the most specific pattern first
        self.configs: dict[str, IkeConfig] = {}
        self.instances: dict[str, Instance] = {}

    def add(self, config: IkeConfig) -> None:
        self.configs[config.name] = config
        self.configs = dict(sorted(self.configs.items(), key=lambda kv: _rank(kv[1])))

    def remove(self, name: str) -> list[Instance]:
        """The template goes: its instances (to delete; they stay listed until they go)."""
        self.configs.pop(name, None)
        return [i for i in self.instances.values() if i.template == name]

    @staticmethod
    def is_template(config: IkeConfig) -> bool:
        return isinstance(config.remote_id, IdentityPattern)

    def lookup(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        """The instance configuration for ``idi`` from the first template that matches it
        (and whose ``local_id`` is ``idr``, if given); nothing is kept."""
        for config in self.configs.values():
            pattern = config.remote_id
            if (isinstance(pattern, IdentityPattern) and pattern.matches(idi)
                    and (idr is None or idr == config.local_id)):
                return dataclasses.replace(config, name=instance_name(config.name, idi),
                                           remote_id=idi)
        return None

    def template_of(self, name: str) -> str | None:
        """The template a configuration named ``name`` came from (an instance, or the
        configuration of an IKE SA that has not become one), else None."""
        inst = self.instances.get(name)
        if inst is not None:
            return inst.template
        base, bracket, _ = name.partition("[")
        return base if bracket and base in self.configs else None

    def room(self, template: str) -> bool:
        """Whether the template may have another instance: fewer than its ``max_clients``
        (by default, and at most, the addresses of its pools)."""
        config = self.configs.get(template)
        if config is None:
            return False
        size = sum(p.size for p in config.pools)
        bound = min(config.max_clients, size) if config.max_clients else size
        return sum(i.template == template for i in self.instances.values()) < bound

    def register(self, config: IkeConfig, template: str) -> Instance:
        inst = Instance(config.name, template, config.remote_id)
        self.instances[config.name] = inst
        return inst


def _rank(config: IkeConfig) -> int:
    pattern = config.remote_id
    return pattern.wildcards if isinstance(pattern, IdentityPattern) else 0
