"""Several replicas behind one gRPC channel: the target, the service config, the retry bounds.

gRPC balances per call only when the channel knows every replica: one connection to a proxy or a
ClusterIP Service carries every call of the channel to one pod. So a list of replicas becomes one
target gRPC resolves itself (``ipv4:a:p,b:p``, ``ipv6:[a]:p,[b]:p``), any gRPC target
(``dns:///segserve-headless:50051``) is kept as it is, and the service config asks for
``round_robin`` (a pick per call), client-side health checking (a draining replica reports
NOT_SERVING and leaves the pick list before it refuses anything) and a bounded retry of calls
refused with UNAVAILABLE.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass

SERVICE = "segmentation.v1.Segmenter"
UNARY_METHODS = ("Segment", "GetModelInfo")
# Targets gRPC resolves itself (its URI schemes); anything else is host:port for the dns resolver.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
_MAX_GRPC_ATTEMPTS = 5  # grpc caps retryPolicy.maxAttempts at 5


@dataclass(frozen=True)
class Retry:
    """How hard the client tries another replica.

    A call refused with UNAVAILABLE or CANCELLED (a draining, stopping or vanished replica) is
    retried by gRPC itself, on
    the next replica, at most ``attempts`` times in all (gRPC's limit is 5), after a random wait of
    up to ``initial_backoff_s`` growing by ``multiplier`` to ``max_backoff_s``. A stream whose
    replica goes away is re-opened at most ``stream_reopens`` times in a row without an answer in
    between, the same backoff apart (the first re-open is immediate)."""

    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    # 10 re-opens span 5.5-11 s: longer than a replica behind a proxy (which cannot tell that it
    # drains) refuses calls before it exits; through the health-checked channel the first one moves
    stream_reopens: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= _MAX_GRPC_ATTEMPTS:
            raise ValueError(
                f"retry attempts must be 1..{_MAX_GRPC_ATTEMPTS} (gRPC's cap), got {self.attempts}"
            )
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("retry backoff: need 0 < initial_backoff_s <= max_backoff_s and multiplier >= 1")
        if self.stream_reopens < 0:
            raise ValueError(f"stream_reopens must be >= 0, got {self.stream_reopens}")

    def backoff_s(self, failures: int) -> float:
        """The longest wait before the ``failures``-th re-open in a row (0 for the first)."""
        if failures <= 1:
            return 0.0
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (failures - 2))


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError with the address otherwise."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
    return host, int(port)


def _replica_list(target: str | Sequence[str]) -> list[str] | None:
    """The replicas a target names one by one, or None for a target gRPC resolves itself."""
    if isinstance(target, str):
        if target.startswith(_SCHEMES):
            return None
        return [t for t in (part.strip() for part in target.split(",")) if t]
    return list(target)


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve replica {host}:{port}: {exc.strerror}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def channel_target(target: str | Sequence[str]) -> str:
    """One gRPC target for ``target``: a gRPC target string is kept; ``host:port`` is kept (gRPC's
    dns resolver balances over every address the name has); several ``host:port`` (a list, or one
    string with commas) become ``ipv4:``/``ipv6:`` with every address, names resolved once, now.

    Raises ValueError for an empty list, a malformed address, or replicas that are IPv4 and IPv6 only
    (one gRPC target holds one family: give a ``dns:///`` name instead)."""
    replicas = _replica_list(target)
    if replicas is None:
        return str(target)
    if not replicas:
        raise ValueError("no replica given")
    if len(replicas) == 1:
        split_host_port(replicas[0])  # say what is wrong now rather than at the first call
        return replicas[0].strip()
    by_family: dict[int, list[str]] = {4: [], 6: []}
    families_of_each = []
    for replica in replicas:
        host, port = split_host_port(replica)
        addresses = _resolve(host, port)
        families_of_each.append({a.version for a in addresses})
        for a in addresses:
            by_family[a.version].append(f"{a}:{port}" if a.version == 4 else f"[{a}]:{port}")
    for version in (4, 6):
        if all(version in families for families in families_of_each):
            return f"ipv{version}:" + ",".join(dict.fromkeys(by_family[version]))
    raise ValueError(
        "replicas mix IPv4-only and IPv6-only addresses; one gRPC channel holds one family: "
        "give a dns:/// name that resolves to all of them"
    )


def names_several(target: str | Sequence[str]) -> bool:
    """Whether the client balances itself over ``target`` (then it health-checks each replica).

    One plain ``host:port`` may be a proxy (nginx, an L7 load balancer): its health answer is one
    replica's, so it is not health-checked."""
    if isinstance(target, str) and target.startswith(("dns:", "ipv4:", "ipv6:")):
        return True
    replicas = _replica_list(target)
    return replicas is not None and len(replicas) > 1


def target_hosts(target: str | Sequence[str]) -> list[str]:
    """The hosts a target names (for telling loopback), or [] when gRPC resolves it unseen."""
    if isinstance(target, str) and target.startswith("unix"):
        return ["localhost"]
    if isinstance(target, str) and target.startswith(("ipv4:", "ipv6:", "dns:")):
        body = target.split(":", 1)[1].lstrip("/")
        if target.startswith("dns:") and "/" in body:  # dns://authority/host:port
            body = body.split("/", 1)[1]
        parts = body.split(",")
    else:
        parts = _replica_list(target) or []
    hosts = []
    for part in parts:
        try:
            hosts.append(split_host_port(part)[0])
        except ValueError:
            hosts.append(part.strip("[]"))  # dns:///name without a port: gRPC's default 443
    return hosts


def service_config(retry: Retry, health_check: bool) -> str:
    """The JSON service config: round_robin, optional health checking, the UNAVAILABLE retry."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_check:
        config["healthCheckConfig"] = {"serviceName": SERVICE}
    if retry.attempts > 1:
        config["methodConfig"] = [
            {
                # unary calls only: gRPC replays a stream's frames on a retry, and the client moves
                # streams itself (segserve.failover), knowing which frames were answered
                "name": [{"service": SERVICE, "method": m} for m in UNARY_METHODS],
                "retryPolicy": {
                    "maxAttempts": retry.attempts,
                    "initialBackoff": f"{retry.initial_backoff_s:.3f}s",
                    "maxBackoff": f"{retry.max_backoff_s:.3f}s",
                    "backoffMultiplier": retry.multiplier,
                    # CANCELLED: a replica that stops cancels the calls that reach it meanwhile
                    # (both methods are idempotent; the caller's own cancel is never retried)
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    return json.dumps(config)
