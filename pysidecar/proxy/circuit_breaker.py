"""Circuit breakers: a cluster's resource counts against its thresholds, per worker.

What for: Envoy's ResourceManager (connections, pending requests, requests, retries) so that
a DestinationRule's connectionPool caps what the sidecar sends to a cluster, answering the
excess at once (503 UO `x-envoy-overloaded: true`, tcp_proxy closes) instead of queueing it.

Promises:
- One `CircuitBreaker` per cluster runtime (so per worker). Envoy shares the counts across
  its worker threads; pysidecar's workers are separate processes and each enforces the full
  thresholds on its own traffic, so a sidecar with N workers admits up to N x each limit. The
  limits are not divided by N: with uneven accept spreading, a divided limit would refuse
  traffic well below the configured one on a busy worker.
- The checks are plain comparisons; callers count up and down themselves (`cx`, `pending`,
  `rq`, `retries`), the way Envoy's resources are inc()/dec()'d by their owners.
- `can_connect` has Envoy's HTTP pool exception: a host pool with no connection at all may open
  one even at the limit, so a request queued on that host is never stranded.
"""

from __future__ import annotations

from pysidecar.model import CircuitBreakers


class CircuitBreaker:
    __slots__ = ("cx", "limits", "pending", "retries", "rq")

    def __init__(self, limits: CircuitBreakers) -> None:
        self.limits = limits
        self.cx = 0  # upstream connections open or connecting (HTTP pools and tcp_proxy)
        self.pending = 0  # HTTP requests waiting for a connection
        self.rq = 0  # HTTP requests on a connection
        self.retries = 0  # requests retrying (from the retry decision to the retry's outcome)

    def can_connect(self, pool_connections: int = -1) -> bool:
        """Another upstream connection; `pool_connections` is the asking host pool's count
        (HTTP), or -1 for a caller without that exception (tcp_proxy)."""
        return self.cx < self.limits.max_connections or pool_connections == 0

    def can_queue(self) -> bool:
        return self.pending < self.limits.max_pending_requests

    def can_request(self) -> bool:
        return self.rq < self.limits.max_requests

    def can_retry(self) -> bool:
        return self.retries < self.limits.max_retries
