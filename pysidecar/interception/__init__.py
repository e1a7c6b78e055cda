"""Traffic interception: `pysidecar init`, Istio's istio-iptables as Python.

Promises (the layout, one job per module):
- options:    flags + env vars -> frozen, validated `InterceptionOptions`.
- rules:      options -> `RuleSet` per address family (pure; Istio's emit order).
- render:     RuleSet (+ our current rules to remove) -> iptables-restore --noflush input.
- state:      iptables-save output -> what is ours; compare with what is wanted.
- backend:    legacy / nft / plain detection and calling the binaries.
- apply:      plan (install / unchanged / reconcile / clean) and one restore per family.
- addresses, routes: IPv6 detection, resolv.conf, TPROXY policy routing.
- validation: the --run-validation probe (SO_ORIGINAL_DST).
- cli:        the `pysidecar init` subcommand.
"""
