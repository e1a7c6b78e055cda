"""Which iptables binaries to drive (legacy, nft or plain) and how to call them.

Promises:
- `detect(force)` follows istio-iptables: `legacy` when `iptables-legacy-save` runs and already
  holds rules (someone, e.g. kubelet or CNI, chose legacy in this namespace); else `nft` when
  `iptables-nft-save` runs; else plain `iptables`. `force` ("legacy"/"nft") skips detection.
- "Works" is decided by running `X-save` only. We do not add and delete a probe rule: in the
  backend we do not pick, that would leave an empty `nat` table behind, and the next detection
  (ours, kube-proxy's) would read it as "this backend is in use".
- `Backend.save()` / `Backend.restore()` run the binaries with argument lists (never a shell)
  and return their output; errors are `BackendError` with the tool's own words.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from pysidecar.interception.options import BinaryChoice
from pysidecar.interception.rules import Family

_SAVE_TIMEOUT = 30.0


class BackendError(RuntimeError):
    """An iptables binary is missing or failed; the message carries its stderr."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One flavour of the iptables tools: `name` is "legacy", "nft" or "plain"."""

    name: str
    suffix: str  # "-legacy", "-nft" or ""

    def binary(self, family: Family, tool: str) -> str:
        base = "iptables" if family is Family.V4 else "ip6tables"
        return f"{base}{self.suffix}{tool}"

    def save(self, family: Family) -> str:
        return _run([self.binary(family, "-save")], None)

    def restore(self, family: Family, script: str) -> None:
        # --noflush: only the chains named in the script are touched; foreign rules stay.
        _run([self.binary(family, "-restore"), "--noflush"], script)


def _run(argv: list[str], stdin: str | None) -> str:
    if shutil.which(argv[0]) is None:
        raise BackendError(f"{argv[0]}: not found in PATH")
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          timeout=_SAVE_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise BackendError(proc.stderr.strip() or f"{argv[0]} exited with {proc.returncode}")
    return proc.stdout


def _works(backend: Backend) -> str | None:
    """The save output if the backend's v4 save runs, else None."""
    try:
        return backend.save(Family.V4)
    except (BackendError, OSError, subprocess.TimeoutExpired):
        return None


def _has_rules(save_output: str) -> bool:
    return any(line.startswith("-A ") for line in save_output.splitlines())


LEGACY = Backend("legacy", "-legacy")
NFT = Backend("nft", "-nft")
PLAIN = Backend("plain", "")


def detect(force: BinaryChoice | None) -> Backend:
    if force == "legacy":
        return LEGACY
    if force == "nft":
        return NFT
    legacy_state = _works(LEGACY)
    if legacy_state is not None and _has_rules(legacy_state):
        return LEGACY
    if _works(NFT) is not None:
        return NFT
    return PLAIN
