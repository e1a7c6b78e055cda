"""The demo lab `psc-demo`: a client pod behind the sidecar and two fake internet hosts.

    client   198.18.0.1  interception installed, `pysidecar run` as uid 1337
    httpbin  198.18.0.2  httpbin.org      lab http server on :80, echo on :7
    cnn      198.18.0.3  edition.cnn.com  lab http server on :80

Promises:
- `up()` either leaves the whole demo running and recorded in /run/pysidecar-lab/demo.json,
  or removes everything it created and raises; it refuses to start a second demo.
- `down()` removes the demo by name and pid (namespaces, processes, /etc/netns, logs, state)
  whether or not `up()` finished; it is safe to run twice.
The lab is persistent: it outlives the `pysidecar lab up` process, and `cleanup_stale` skips it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from pysidecar.lab import registry
from pysidecar.lab.lab import Lab
from pysidecar.lab.netns import LabError
from pysidecar.lab.pod import DEFAULT_ISTIO_ARGS

DEMO_ID = "psc-demo"
STATE_FILE = os.path.join(registry.RUN_DIR, "demo.json")
PROXY_READY_PORT = 15001  # virtualOutbound: once it listens, captured traffic has somewhere to go


def up(
    proxy: bool = True, proxy_args: Sequence[str] = ("run", "--concurrency", "1")
) -> dict[str, Any]:
    """Build the demo lab and return its state (also written to STATE_FILE)."""
    if os.path.exists(STATE_FILE) or os.path.exists(registry.marker_dir(DEMO_ID)):
        raise LabError(f"demo lab already up (see {STATE_FILE}); run `pysidecar lab down` first")
    lab = Lab(DEMO_ID, persistent=True)
    try:
        client = lab.add_pod("client")
        httpbin = lab.add_pod("httpbin", hostnames=["httpbin.org"])
        cnn = lab.add_pod("cnn", hostnames=["edition.cnn.com"])
        httpbin.spawn_server("http", 80, "--name", "httpbin.org")
        httpbin.spawn_server("echo", 7)
        cnn.spawn_server("http", 80, "--name", "edition.cnn.com")
        if proxy:
            client.install_interception(DEFAULT_ISTIO_ARGS)
            p = client.spawn_proxy(proxy_args)
            client.wait_port(PROXY_READY_PORT, timeout=20, proc=p)
        state = {
            "labid": lab.prefix,
            "logdir": lab.logdir,
            "pods": {
                p.name: {"ns": p.ns, "ip": p.ip, "ip6": p.ip6, "hostnames": list(p.hostnames)}
                for p in lab.pods.values()
            },
            "proxy_pid": client.proxy.pid if client.proxy else None,
        }
        with open(STATE_FILE, "w") as f:
            json.dump(state, f, indent=1)
    except BaseException as e:
        logs = lab.logs()
        lab.close()
        raise LabError(f"demo lab did not come up: {e}\n{logs}") from e
    lab.detach()  # leave it running after this process exits
    return state


def state() -> dict[str, Any] | None:
    try:
        with open(STATE_FILE) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except FileNotFoundError:
        return None


def down() -> list[str]:
    """Remove the demo lab; return the errors met (empty: all gone)."""
    errors = registry.destroy(DEMO_ID)
    if not errors and os.path.exists(STATE_FILE):
        os.unlink(STATE_FILE)
    return errors
