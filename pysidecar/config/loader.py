"""Turn what `-c` points at into one `Bootstrap`.

Promises:
- No path: the embedded standard sidecar (`config.sidecar.standard_sidecar`).
- A file holding an Envoy v3 bootstrap: exactly that config, nothing added.
- Anything unreadable, malformed or unsupported raises `ConfigError` naming the file and the
  YAML path; nothing is half-loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from pysidecar.config import envoy
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.model import Bootstrap


def load(paths: Sequence[str]) -> Bootstrap:
    if not paths:
        return standard_sidecar()
    if len(paths) > 1:
        raise ConfigError(paths[1], "", "only one Envoy bootstrap file can be given")
    return envoy.load_file(paths[0])
