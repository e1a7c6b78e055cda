"""Load balancers: which host of a cluster gets the next connection or request.

Promises:
- Envoy's policies over a host list: ROUND_ROBIN (weighted smoothly, so weights 3:1 give
  a a a b, not a run of a's), RANDOM (weighted), LEAST_REQUEST (power of two choices over active
  requests, Envoy's default choice_count 2).
- `Host.active` is kept by the users of a pick (tcp_proxy: one per open connection; the HTTP
  router: one per attempt in flight), per worker process: Envoy's workers share one atomic
  count per host, ours are processes and each balances on its own connections.
- A balancer never blocks and never allocates per pick beyond the chosen host; with no hosts it
  returns None (the caller's "no healthy upstream").
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pysidecar.model import LbPolicy


class Host:
    """An upstream host as the data path sees it: address, weight, live request count."""

    __slots__ = ("active", "address", "current_weight", "port", "weight")

    def __init__(self, address: str, port: int, weight: int = 1) -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.active = 0
        self.current_weight = 0

    def __repr__(self) -> str:
        return f"Host({self.address}:{self.port}, w={self.weight})"

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


class LoadBalancer:
    def choose(self, hosts: Sequence[Host]) -> Host | None:
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    """Smooth weighted round robin (nginx's); plain rotation when all weights are equal."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, hosts: Sequence[Host]) -> Host | None:
        if not hosts:
            return None
        if all(h.weight == hosts[0].weight for h in hosts):
            host = hosts[self._next % len(hosts)]
            self._next += 1
            return host
        total = 0
        best: Host | None = None
        for h in hosts:
            h.current_weight += h.weight
            total += h.weight
            if best is None or h.current_weight > best.current_weight:
                best = h
        assert best is not None
        best.current_weight -= total
        return best


class Random(LoadBalancer):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, hosts: Sequence[Host]) -> Host | None:
        if not hosts:
            return None
        return self._rng.choices(hosts, weights=[h.weight for h in hosts])[0]


class LeastRequest(LoadBalancer):
    """Power of two choices: of two random hosts, the one with fewer active requests."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, hosts: Sequence[Host]) -> Host | None:
        if not hosts:
            return None
        if len(hosts) == 1:
            return hosts[0]
        a, b = self._rng.sample(list(hosts), 2)
        return a if a.active <= b.active else b


def load_balancer(policy: LbPolicy) -> LoadBalancer:
    if policy is LbPolicy.RANDOM:
        return Random()
    if policy is LbPolicy.LEAST_REQUEST:
        return LeastRequest()
    return RoundRobin()
