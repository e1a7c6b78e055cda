"""pysidecar's benchmark harness: pysidecar beside Envoy and a direct connection, one config.

Run it with `bench/run.sh` (installs what it needs) or `python -m bench`; see bench/README.md.
Not part of the test suite: only its pure parts (bench/parse.py) are unit-tested.
"""
