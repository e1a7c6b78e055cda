"""pysidecar.lab: "pods" as Linux network namespaces, for the end-to-end tests and the demo.

A `Lab` owns a switch namespace (one Linux bridge) and any number of `Pod`s, each a network
namespace with `lo` and `eth0` on that bridge. Addresses come only from the benchmarking ranges
198.18.0.0/15 and 2001:2::/48, names only from /etc/netns/<ns>/hosts, and no lab namespace has
a route off the machine. Closing a lab (or `cleanup_stale` after a crash) removes everything it
created, by name and by pid.

    with Lab() as lab:
        app = lab.add_pod("app")
        ext = lab.add_pod("ext", hostnames=["httpbin.org"])
        ext.spawn_server("http", 80)
        print(app.run(["curl", "-s", "http://httpbin.org/"]).stdout)
"""

from pysidecar.lab.lab import Lab
from pysidecar.lab.netns import LabError
from pysidecar.lab.pod import DEFAULT_ISTIO_ARGS, PROXY_UID, Pod
from pysidecar.lab.registry import cleanup_stale, destroy

__all__ = ["DEFAULT_ISTIO_ARGS", "PROXY_UID", "Lab", "LabError", "Pod", "cleanup_stale", "destroy"]
