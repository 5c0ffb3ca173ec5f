"""Several hosts on one machine: Linux network namespaces joined by veth pairs on a bridge.

    with netns.Network(["data", "worker1", "worker2", "web"]) as net:
        net.start("data", "redis", ["redis-server", ...], env, log)   # runs inside the data namespace
        net.link("worker1", up=False)                                # unplug its cable: a partition
        net.shape("data", delay_ms=10, loss_percent=2)                # netem on both ends of its link
        with net.inside("control"):                                   # this thread's sockets join the network
            psycopg.connect(f"host={net.address('data')} ...")

Every host is a namespace with one interface (``eth0``) plugged into a bridge that lives in a
namespace of its own, so nothing of this network (routes, addresses, the bridge) appears in the
machine's namespace and no packet leaves the namespaces made here; loopback of a host is its own.
The test process joins as the host ``control`` (``inside``). Names start with ``mnqnet<pid>-``:
a later run removes what a crashed run left (its pid is gone), never what a live run uses.
Needs root and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from stack.processes import ChildProcess
from stack.state import pid_alive

NAME_PREFIX = "mnqnet"
SWITCH = "switch"
CONTROL = "control"
INTERFACE = "eth0"
BRIDGE = "br0"
SUBNET_BASE = "10.213"  # a /24 of 10.213.0.0/16 per run; see choose_subnet
CLONE_NEWNET = 0x40000000
LOSS_TABLE = "mnqnet_loss"
CUT_TABLE = "mnqnet_cut"
LOSS_SCALE = 10_000  # loss in hundredths of a percent
NO_NETEM = "this kernel has no sch_netem (CONFIG_NET_SCH_NETEM): tc cannot add delay or jitter"
_STALE_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)-")


class NetworkUnavailable(RuntimeError):
    """This machine cannot make namespaces (not root, no iproute2): the message says which."""


def missing_requirements() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} (apt package {package}) is not installed"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


@functools.cache
def netem_available() -> bool:
    """Whether tc can add delay here: asked of a throwaway namespace's loopback."""
    probe = f"{NAME_PREFIX}{os.getpid()}-netem-probe"
    ip("netns", "add", probe)
    try:
        return subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True).returncode == 0  # fmt: skip
    finally:
        ip("netns", "delete", probe, check=False)


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside (a namespace with processes would outlive its name), then delete it."""
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "delete", name, check=False)


def remove_stale() -> list[str]:
    """Remove the namespaces of runs whose process is gone; returns their names."""
    stale = [name for name in namespaces() if (match := _STALE_NAME.match(name)) and not pid_alive(int(match.group(1)))]
    for name in stale:
        remove_namespace(name)
    return stale


def choose_subnet() -> ipaddress.IPv4Network:
    """A /24 that no route of this machine covers, so an address never means two places to a reader of the logs."""
    routes = ip("-4", "route", "show", "table", "all").stdout
    taken = {ipaddress.ip_network(word, strict=False) for word in re.findall(r"\b\d+\.\d+\.\d+\.\d+/\d+\b", routes)}
    for offset in range(256):
        candidate = ipaddress.ip_network(f"{SUBNET_BASE}.{(os.getpid() + offset) % 254 + 1}.0/24")
        if not any(candidate.overlaps(route) for route in taken):
            return candidate
    raise NetworkUnavailable(f"every /24 of {SUBNET_BASE}.0.0/16 overlaps a route of this machine")


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (sockets made later belong there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


class Network:
    """A bridge and one namespace per host, each host at ``address(host)``; removed on exit, also after a crash."""

    def __init__(self, hosts: Sequence[str]) -> None:
        reason = missing_requirements()
        if reason:
            raise NetworkUnavailable(reason)
        self.hosts = [*hosts, CONTROL]
        self.run_prefix = f"{NAME_PREFIX}{os.getpid()}-{os.urandom(2).hex()}-"
        self.subnet = choose_subnet()
        self._addresses = {
            host: str(self.subnet.network_address + index) for index, host in enumerate(self.hosts, start=1)
        }
        self._made: list[str] = []

    def namespace(self, host: str) -> str:
        return f"{self.run_prefix}{host}"

    def address(self, host: str) -> str:
        return self._addresses[host]

    def __enter__(self) -> Network:
        remove_stale()
        atexit.register(self.remove)  # a run that ends without __exit__ (an error in a fixture) still cleans up
        try:
            self._add_namespace(SWITCH)
            self._in(SWITCH, "link", "add", BRIDGE, "type", "bridge")
            self._in(SWITCH, "link", "set", BRIDGE, "up")
            for host in self.hosts:
                self._plug(host)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Delete every namespace of this run (the bridge and the veths go with them); safe to call twice."""
        for name in reversed(self._made):
            remove_namespace(name)
        self._made.clear()
        atexit.unregister(self.remove)

    def _add_namespace(self, host: str) -> None:
        name = self.namespace(host)
        ip("netns", "add", name)
        self._made.append(name)
        self._in(host, "link", "set", "lo", "up")

    def _in(self, host: str, *args: str) -> None:
        ip("-n", self.namespace(host), *args)

    def _port(self, host: str) -> str:
        """The switch's end of ``host``'s cable (interface names are at most 15 characters)."""
        return f"p{self.hosts.index(host)}"

    def _plug(self, host: str) -> None:
        self._add_namespace(host)
        port = self._port(host)
        ip(
            "link",
            "add",
            INTERFACE,
            "netns",
            self.namespace(host),
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.namespace(SWITCH),
        )
        self._in(SWITCH, "link", "set", port, "master", BRIDGE)
        self._in(SWITCH, "link", "set", port, "up")
        self._in(host, "addr", "add", f"{self.address(host)}/{self.subnet.prefixlen}", "dev", INTERFACE)
        self._in(host, "link", "set", INTERFACE, "up")

    def command(self, host: str, command: Sequence[str]) -> list[str]:
        """``command`` run inside ``host`` (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace(host), *command]

    def start(self, host: str, name: str, command: Sequence[str], env: dict[str, str], log_path: Path) -> ChildProcess:
        return ChildProcess(f"{name} on {host}", self.command(host, command), env, log_path)

    def link(self, host: str, up: bool) -> None:
        """Plug or unplug ``host``'s cable at the switch: its processes keep running and see no error, only silence."""
        self._in(SWITCH, "link", "set", self._port(host), "up" if up else "down")

    def cut(self, host: str, other: str) -> None:
        """Drop everything between two hosts at the switch, both ways; each still reaches every other host."""
        self._filter(f"{CUT_TABLE}_{self._port(host)}_{self._port(other)}", [
            f'iifname "{self._port(host)}" oifname "{self._port(other)}" drop',
            f'iifname "{self._port(other)}" oifname "{self._port(host)}" drop',
        ])  # fmt: skip

    def join(self, host: str, other: str) -> None:
        """Undo ``cut``."""
        self._filter(f"{CUT_TABLE}_{self._port(host)}_{self._port(other)}", [])

    def _filter(self, table: str, rules: list[str]) -> None:
        """Replace the bridge table ``table`` of the switch by one forward chain of ``rules``."""
        body = "".join(f"{rule}\n" for rule in rules)
        script = (
            f"table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{\nchain forward {{\n"
            f"type filter hook forward priority 0;\n{body}}}\n}}\n"
        )
        subprocess.run(
            self.command(SWITCH, ["nft", "-f", "-"]), input=script, check=True, capture_output=True, text=True
        )

    def shape(self, host: str, delay_ms: float = 0, jitter_ms: float = 0, loss_percent: float = 0) -> None:
        """Degrade ``host``'s link; all zeros restores it.

        Delay and jitter: netem on both ends of the link, so each direction gets ``delay_ms`` (``host`` to
        any other host gains twice that in round trip). Loss: the switch drops each packet to or from ``host``
        with ``loss_percent`` (nftables' random numbers, which any kernel with nf_tables has, where
        sch_netem may be missing), so a packet between two shaped hosts crosses two lossy links.
        """
        if delay_ms or jitter_ms:
            if not netem_available():
                raise NetworkUnavailable(NO_NETEM)
            netem = ["delay", f"{delay_ms}ms", *([f"{jitter_ms}ms"] if jitter_ms else [])]
            for where, device in ((host, INTERFACE), (SWITCH, self._port(host))):
                tc("-n", self.namespace(where), "qdisc", "replace", "dev", device, "root", "netem", *netem)
        else:
            for where, device in ((host, INTERFACE), (SWITCH, self._port(host))):
                subprocess.run(
                    ["tc", "-n", self.namespace(where), "qdisc", "del", "dev", device, "root"], capture_output=True
                )
        self._drop(host, loss_percent)

    def _drop(self, host: str, loss_percent: float) -> None:
        """Random loss on the switch, in flight: a sender's own drop would show it EPERM, which a cable never does."""
        port, threshold = self._port(host), round(loss_percent * LOSS_SCALE / 100)
        rules = [
            f'{side} "{port}" numgen random mod {LOSS_SCALE} < {threshold} drop' for side in ("iifname", "oifname")
        ]
        self._filter(f"{LOSS_TABLE}_{port}", rules if threshold else [])

    @contextlib.contextmanager
    def inside(self, host: str = CONTROL) -> Iterator[None]:
        """Run the block with this thread in ``host``'s namespace; connections opened there stay there after it."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{self.namespace(host)}")
            yield
        finally:
            _setns(f"/proc/self/fd/{own}")
            os.close(own)
