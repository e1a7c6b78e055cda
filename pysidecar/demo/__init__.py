"""`pysidecar demo`: the sidecar intercepting real traffic, step by step, in throw-away lab pods.

Promises:
- Builds lab pods (network namespaces, 198.18.0.0/15 addresses, fake names such as httpbin.org
  and edition.cnn.com that resolve only inside the lab; nothing reaches a real host), installs
  Istio's iptables rules with `pysidecar init`, runs `pysidecar run` as uid 1337 on Istio YAML,
  and replays seed 000 (egress: ALLOW_ANY, REGISTRY_ONLY 502, a hot ServiceEntry, a 3 s
  VirtualService timeout → 504), seed 002 (the 6:4 split, inbound interception adding a
  response header, the listener table), seed 001 (an ingress gateway in router mode: host and
  path routing, SIMPLE TLS chosen by SNI with certificates made by openssl at run time) and
  seed 000's egress gateway (client sidecar → gateway → httpbin.org), checking each step's
  expectation and printing the counters, Istio metrics and access-log lines the step produced.
- Exit 0 only when every step's expectation held; see `runner` for the other statuses.
- Everything it creates is removed on exit, on failure, on Ctrl-C and on SIGTERM (the
  certificates as soon as their step is done).
- Finishes in well under a minute (the 3 s timeout is the longest wait).

Modules: `configs` (the YAML), `world` (pods, proxies, observation), `steps` (the steps),
`runner` (output, exit status, cleanup).
"""

from pysidecar.demo.runner import add_arguments, main

__all__ = ["add_arguments", "main"]
