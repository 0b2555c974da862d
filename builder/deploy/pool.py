"""``pool.yaml``: the two hosts, their disks and networks, and the DRBD resource between them.

The file is read once and validated into frozen dataclasses.  Every problem is a
:class:`ConfigError` that names the file and the key (``hosts[1].replication.address``), and
nothing is written before the whole file has been validated.

Every value ends up in a DRBD resource file, ``lvm.conf`` or a shell runbook, so names, paths and
URLs are held to plain characters: no quotes, spaces, ``$``, ``;`` or other shell
metacharacters.  Whether a valid pool is also a *safe* one is the job of ``checks.py``.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.builds.recipes import Recipe, Syntax, recipe_of_version
from builder.errors import ConfigError
from builder.publish import layout
from builder.publish.consumers import profile
from builder.specs import Registry, Target
from builder.yamlreader import YamlReader

HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
INTERFACE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,14}$")
DISK = re.compile(r"^/dev/[A-Za-z0-9_.:+@/-]+$")
RATE = re.compile(r"^[1-9][0-9]*[KMG]?$")
HANDLER = re.compile(r"^/[A-Za-z0-9_./+-]+(?: [A-Za-z0-9_.@+/=-]+)*$")
URL = re.compile(r"^(?:https?|file)://[A-Za-z0-9._~:/%@+=,-]+$")
DRBD_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.\d+)*$")
# DRBD's config scanner reads digits with an optional unit (K, M, G, s) as a number, so a host
# or resource named like that breaks `on NAME {` and `resource NAME {` for every drbdadm.
DRBD_NUMBER = re.compile(r"[0-9]+[KMGs]?")

MIN_PORT = 1
MAX_PORT = 65535
# drbd_limits.h: DRBD_RESYNC_RATE_MAX, in KiB/s (a bare number is KiB/s); drbdadm refuses more.
MAX_RESYNC_RATE_KIB = 4 << 20
MAX_MINOR = 255  # DRBD 8.3's minor_count limit; the oldest syntax sets the bound for all


class Fencing(enum.StrEnum):
    DONT_CARE = "dont-care"
    RESOURCE_ONLY = "resource-only"
    RESOURCE_AND_STONITH = "resource-and-stonith"


AFTER_SB_0PRI = (
    "disconnect",
    "discard-younger-primary",
    "discard-older-primary",
    "discard-zero-changes",
    "discard-least-changes",
)
AFTER_SB_1PRI = (
    "disconnect",
    "consensus",
    "violently-as0p",
    "discard-secondary",
    "call-pri-lost-after-sb",
)
AFTER_SB_2PRI = ("disconnect", "violently-as0p", "call-pri-lost-after-sb")

RECOMMENDED_AFTER_SB = {
    "after_sb_0pri": "discard-zero-changes",
    "after_sb_1pri": "discard-secondary",
    "after_sb_2pri": "disconnect",
}


@dataclass(frozen=True, kw_only=True)
class Host:
    name: str  # `uname -n` on the host: DRBD matches its `on NAME` sections against it
    management: ipaddress.IPv4Interface
    management_interface: str
    replication: ipaddress.IPv4Interface
    replication_interface: str
    disk: str  # the backing block device under DRBD


@dataclass(frozen=True, kw_only=True)
class Drbd:
    version: str
    recipe: Recipe  # the DRBD family's: config syntax, package names
    resource: str
    minor: int
    port: int
    resync_rate: str
    fencing: Fencing
    fence_peer_handler: str | None
    split_brain_handler: str | None
    after_sb_0pri: str
    after_sb_1pri: str
    after_sb_2pri: str
    initial_sync_from: str  # the host whose disk content becomes the content of both

    @property
    def device(self) -> str:
        return f"/dev/drbd{self.minor}"

    @property
    def syntax(self) -> Syntax:
        return self.recipe.syntax


class WithoutPygpgme(enum.StrEnum):
    """What an EL5 dom0's install step does when python cannot import gpgme (pygpgme).

    yum 3.2.22 checks ``repomd.xml.asc`` only through pygpgme: without it every metadata
    download of a ``repo_gpgcheck=1`` repository fails.
    """

    STOP = "stop"  # stop and say how to install pygpgme (the default)
    REPO_GPGCHECK_OFF = "repo_gpgcheck=0"  # fall back, package signatures still checked


@dataclass(frozen=True, kw_only=True)
class Repo:
    url: str  # the base URL given to `publish`; consumers live under <url>/<consumer>/<basearch>/
    gpgkey: str
    without_pygpgme: WithoutPygpgme = WithoutPygpgme.STOP


# The guard's defaults: a live migration of a dom0's VM over a gigabit management network copies
# about 6 GiB of memory a minute; five minutes covers most VMs, and the grace period leaves room
# for cron's one-minute steps.
DEFAULT_MIGRATION_MINUTES = 5
DEFAULT_GRACE_MINUTES = 10
MAX_GUARD_MINUTES = 24 * 60


@dataclass(frozen=True, kw_only=True)
class Guard:
    """The runbook's ``guard`` step: how long the SR's VMs may run on both hosts."""

    grace_minutes: int = DEFAULT_GRACE_MINUTES  # apart longer than this: log, hook, exit 3
    migration_minutes: int = DEFAULT_MIGRATION_MINUTES  # the longest live migration here takes
    hook: str | None = None  # a site command run when the grace period is over


@dataclass(frozen=True, kw_only=True)
class Pool:
    file: Path
    sha256: str  # of the pool file's bytes: generated files name it, so they can be traced back
    target: Target
    sr_name: str
    repo: Repo
    drbd: Drbd
    hosts: tuple[Host, Host]
    guard: Guard = Guard()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def first(self) -> Host:
        """The host that supplies the initial content and creates the SR."""
        return self.host(self.drbd.initial_sync_from)

    @property
    def second(self) -> Host:
        return next(h for h in self.hosts if h.name != self.drbd.initial_sync_from)

    def peer(self, host: Host) -> Host:
        return next(h for h in self.hosts if h.name != host.name)

    @property
    def repo_baseurl(self) -> str:
        return layout.baseurl(self.repo.url, self.target.consumer, self.target.basearch)


def syntax_of(version: str) -> Syntax | None:
    """The config syntax of a DRBD version such as ``8.4.1``, ``8.3`` or ``9.2.5``."""
    if not DRBD_VERSION.fullmatch(version):
        return None
    recipe = recipe_of_version(version)
    return recipe.syntax if recipe is not None else None


class _Reader(YamlReader):
    """The shared YAML reader, plus the pool file's own kind of value."""

    def interface(self, key: str) -> ipaddress.IPv4Interface:
        value = self.raw(key)
        if not isinstance(value, str) or "/" not in value:
            raise self.fail(
                key,
                f"{value!r} must be an IPv4 address with its prefix length, e.g. 10.0.0.1/24",
                hint="The prefix tells which network the address is on.",
            )
        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError as exc:
            raise self.fail(key, f"{value!r} is not an IPv4 address with prefix: {exc}") from None
        if iface.network.prefixlen >= 31 or iface.ip in (
            iface.network.network_address,
            iface.network.broadcast_address,
        ):
            raise self.fail(key, f"{value} is not a usable host address on its network")
        if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
            raise self.fail(key, f"{value} is not a host address another machine can reach")
        return iface


def _drbd_name(reader: _Reader, key: str, name: str) -> str:
    if DRBD_NUMBER.fullmatch(name):
        raise reader.fail(
            key,
            f"{name!r} is not valid: DRBD reads a name of digits (and a unit K, M, G or s) as "
            "a number",
            hint="Use a name with a letter in it.",
        )
    return name


def _host(reader: _Reader) -> Host:
    management = reader.mapping("management")
    replication = reader.mapping("replication")
    name = reader.text(
        "name", HOST_NAME, explain="use the host name `uname -n` prints (letters, digits, -, .)"
    )
    host = Host(
        name=_drbd_name(reader, "name", name),
        management=management.interface("address"),
        management_interface=management.text(
            "interface", INTERFACE, explain="a network interface name such as xenbr0"
        ),
        replication=replication.interface("address"),
        replication_interface=replication.text(
            "interface", INTERFACE, explain="a network interface name such as xenbr1"
        ),
        disk=reader.text("disk", DISK, explain="a block device path under /dev/ (no spaces)"),
    )
    if ".." in host.disk.split("/"):
        raise reader.fail("disk", "must not contain '..'")
    management.done()
    replication.done()
    reader.done()
    return host


def _resync_rate(reader: _Reader) -> str:
    rate: str = reader.text(
        "resync_rate", RATE, default="40M", explain="a number with optional K, M or G"
    )
    number, unit = (rate[:-1], rate[-1]) if rate[-1] in "KMG" else (rate, "K")
    kib = int(number) * {"K": 1, "M": 1 << 10, "G": 1 << 20}[unit]
    if kib > MAX_RESYNC_RATE_KIB:
        raise reader.fail(
            "resync_rate",
            f"{rate} is out of range: DRBD takes at most {MAX_RESYNC_RATE_KIB}K (4G) per second",
        )
    return rate


def _drbd(reader: _Reader, host_names: tuple[str, str]) -> Drbd:
    version = reader.text("version", re.compile(r"^[0-9][0-9A-Za-z.-]*$"))
    recipe = recipe_of_version(version) if DRBD_VERSION.fullmatch(version) else None
    if recipe is None:
        raise reader.fail(
            "version",
            f"{version!r} is not a DRBD version this tool can configure",
            hint="Use an 8.3.x, 8.4.x or 9.x version (it picks the resource file syntax).",
        )
    fencing = Fencing(reader.choice("fencing", tuple(f.value for f in Fencing), "resource-only"))
    default_fence = (
        "/usr/lib/drbd/crm-fence-peer.9.sh"
        if recipe.syntax is Syntax.V9
        else "/usr/lib/drbd/crm-fence-peer.sh"
    )
    handlers = {"fence_peer_handler": default_fence}
    handlers["split_brain_handler"] = "/usr/lib/drbd/notify-split-brain.sh root"
    values: dict[str, str | None] = {}
    for key, default in handlers.items():
        # An explicit empty value (``split_brain_handler: ""``) means "none": checks object to it.
        if key in reader.data and reader.data[key] in (None, "", False):
            reader.raw(key, required=False)
            values[key] = None
        else:
            values[key] = reader.text(
                key, HANDLER, default=default, explain="an absolute path and plain arguments"
            )
    sb0 = reader.choice("after_sb_0pri", AFTER_SB_0PRI, RECOMMENDED_AFTER_SB["after_sb_0pri"])
    sb1 = reader.choice("after_sb_1pri", AFTER_SB_1PRI, RECOMMENDED_AFTER_SB["after_sb_1pri"])
    sb2 = reader.choice("after_sb_2pri", AFTER_SB_2PRI, RECOMMENDED_AFTER_SB["after_sb_2pri"])
    first = reader.text("initial_sync_from", HOST_NAME)
    if first not in host_names:
        raise reader.fail(
            "initial_sync_from",
            f"{first!r} is not one of the hosts ({', '.join(host_names)})",
            hint="Name the host whose disk content should be copied to the other one.",
        )
    drbd = Drbd(
        version=version,
        recipe=recipe,
        resource=_drbd_name(
            reader,
            "resource",
            reader.text("resource", RESOURCE_NAME, default="r0", explain="letters, digits, _ . -"),
        ),
        minor=reader.integer("minor", 0, MAX_MINOR, default=1),
        port=reader.integer("port", MIN_PORT, MAX_PORT, default=7789),
        resync_rate=_resync_rate(reader),
        fencing=fencing,
        fence_peer_handler=values["fence_peer_handler"],
        split_brain_handler=values["split_brain_handler"],
        after_sb_0pri=sb0,
        after_sb_1pri=sb1,
        after_sb_2pri=sb2,
        initial_sync_from=first,
    )
    reader.done()
    return drbd


def _guard(top: _Reader) -> Guard:
    if top.raw("guard", required=False) is None:
        return Guard()
    reader = top.mapping("guard")
    guard = Guard(
        grace_minutes=reader.integer(
            "grace_minutes", 1, MAX_GUARD_MINUTES, default=DEFAULT_GRACE_MINUTES
        ),
        migration_minutes=reader.integer(
            "migration_minutes", 1, MAX_GUARD_MINUTES, default=DEFAULT_MIGRATION_MINUTES
        ),
        hook=reader.text(
            "hook",
            HANDLER,
            required=False,
            explain="an absolute path and plain arguments, e.g. /usr/local/sbin/page-oncall drbd",
        ),
    )
    reader.done()
    return guard


def parse_pool(file: Path, text: str, registry: Registry) -> Pool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: the top level must be a mapping with target, sr_name, repo, drbd and hosts",
            hint="Run `python -m builder deploy init` for a commented example.",
        )
    top = _Reader(file, data, "")
    target_name = top.text("target", re.compile(r"^.+$"))
    try:
        target = registry.target(target_name)
    except ConfigError as exc:
        raise top.fail("target", exc.message, hint=exc.hint) from None
    raw_hosts = top.raw("hosts")
    if not isinstance(raw_hosts, list) or not all(isinstance(h, dict) for h in raw_hosts):
        raise top.fail("hosts", "must be a list of two host mappings")
    if len(raw_hosts) != 2:
        raise top.fail(
            "hosts",
            f"lists {len(raw_hosts)} host(s); a dual-primary DRBD resource has exactly two",
        )
    hosts = (
        _host(_Reader(file, raw_hosts[0], "hosts[0]")),
        _host(_Reader(file, raw_hosts[1], "hosts[1]")),
    )
    if hosts[0].name == hosts[1].name:
        raise top.fail("hosts[1].name", f"{hosts[1].name!r} is also the name of hosts[0]")
    repo_reader = top.mapping("repo")
    url = repo_reader.text("url", URL, explain="an http://, https:// or file:// URL").rstrip("/")
    repo = Repo(
        url=url,
        gpgkey=repo_reader.text(
            "gpgkey",
            URL,
            default=f"{url}/{layout.KEY_FILE_NAME}",
            explain="an http://, https:// or file:// URL",
        ),
        without_pygpgme=WithoutPygpgme(
            repo_reader.choice(
                "without_pygpgme", [w.value for w in WithoutPygpgme], WithoutPygpgme.STOP.value
            )
        ),
    )
    needs_pygpgme = profile(target.consumer).metadata_check_needs_pygpgme
    if repo.without_pygpgme is not WithoutPygpgme.STOP and not needs_pygpgme:
        raise repo_reader.fail(
            "without_pygpgme",
            f"only EL5 dom0s can lack pygpgme; {target.name} is {target.consumer.value}, whose "
            "yum depends on it",
            hint="Remove repo.without_pygpgme from the pool file.",
        )
    repo_reader.done()
    drbd = _drbd(top.mapping("drbd"), (hosts[0].name, hosts[1].name))
    pool = Pool(
        file=file,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        target=target,
        sr_name=top.text("sr_name", SR_NAME, explain="letters, digits and _ . + - (no spaces)"),
        repo=repo,
        drbd=drbd,
        hosts=hosts,
        guard=_guard(top),
    )
    top.done()
    return pool


def load_pool(file: Path, registry: Registry) -> Pool:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Pool file {file} does not exist.",
            hint="Write one with `python -m builder deploy init --output pool.yaml`.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read pool file: {exc}") from exc
    return parse_pool(file.resolve(), text, registry)


EXAMPLE_POOL = """\
# pool.yaml: two dom0 hosts sharing one dual-primary DRBD device as an LVM storage repository.
# Check it with `python -m builder deploy check --pool pool.yaml`, then
# render with `python -m builder deploy render --pool pool.yaml --output deploy/`.

# The dom0 target both hosts run (see `python -m builder targets`): it decides the kernel module
# package and the yum repository directory (<repo>/<consumer>/<basearch>/).
target: xcp-1.5

# The name-label of the storage repository in XCP.
sr_name: drbd-sr

repo:
  # The base URL `publish` served the signed repository at.
  url: http://repo.example.lan/xcp-drbd
  # The public key published beside the repository (default: <url>/RPM-GPG-KEY-xcp-drbd-builder).
  # gpgkey: http://repo.example.lan/xcp-drbd/RPM-GPG-KEY-xcp-drbd-builder
  # EL5 dom0s only. yum 3.2.22 checks the repository's metadata signature (repo_gpgcheck=1) only
  # through pygpgme; without it, every download fails. The runbook's install step therefore
  # stops when `python -c 'import gpgme'` fails, and says how to install pygpgme from CentOS 5's
  # base repository. Only where that is impossible: `repo_gpgcheck=0` makes it install the repo
  # with repo_gpgcheck=0 instead (package signatures are still checked: gpgcheck=1). Every
  # rendered file records this choice.
  # without_pygpgme: stop

drbd:
  # 8.3.x, 8.4.x or 9.x: picks the resource file syntax; its packages must be in the repo.
  version: 8.4.1
  resource: r0          # DRBD resource name
  minor: 1              # the device is /dev/drbd<minor>
  port: 7789            # TCP port on the replication network
  resync_rate: 40M      # resync bandwidth; leave room for the replication traffic itself
  # The host whose disk content is kept: the first sync overwrites the other host's disk.
  initial_sync_from: xcp1
  # Safety settings. The defaults are the recipe's; `deploy check` explains any change.
  # fencing: resource-only
  # The default handler drives Pacemaker, which dom0 does not run by default: point it at a
  # script that can outdate or power off the peer in your setup (IPMI, PDU).
  # fence_peer_handler: /usr/lib/drbd/crm-fence-peer.sh
  # split_brain_handler: /usr/lib/drbd/notify-split-brain.sh root
  # after_sb_0pri: discard-zero-changes
  # after_sb_1pri: discard-secondary
  # after_sb_2pri: disconnect

# The runbook's `guard` step, run from cron on the pool master, checks that the VMs on the SR
# run on one host, and raises the alarm when they stay apart longer than the grace period.
guard:
  grace_minutes: 10       # apart longer than this: syslog, the hook, exit status 3
  migration_minutes: 5    # the longest a live migration of one of these VMs takes here
  # hook: /usr/local/sbin/page-oncall drbd   # run (with the details) when the grace is over

# Exactly two hosts. Replicate over a dedicated interface and subnet: a management
# reconfiguration takes the management interface down, and replication over it would freeze
# every write, then break.
hosts:
  - name: xcp1                   # must equal `uname -n` on the host
    management:
      address: 192.168.1.11/24   # with the prefix length: checks compare networks
      interface: xenbr0
    replication:
      address: 10.0.0.1/24
      interface: xenbr1
    disk: /dev/disk/by-id/ata-EXAMPLE-DISK-1   # backing disk; its content is replaced
  - name: xcp2
    management:
      address: 192.168.1.12/24
      interface: xenbr0
    replication:
      address: 10.0.0.2/24
      interface: xenbr1
    disk: /dev/disk/by-id/ata-EXAMPLE-DISK-2
"""
