"""Policy reloader sidecar: POST /admin/reload when the mounted policies change.

kubelet refreshes a ConfigMap volume in place (an atomic symlink swap, within about a
minute of the update) but the gateway does not watch files; this loop hashes the policy
directory and asks the gateway beside it to reload whenever the hash moves. Standard
library only, so it runs in the gateway image itself.

Env: POLICIES_DIR (/app/policies), RELOAD_URL (http://127.0.0.1:8080/admin/reload),
GATEWAY_ADMIN_KEY (sent as a Bearer token), INTERVAL_S (10).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.md")):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def reload(url: str, key: str) -> bool:
    request = urllib.request.Request(
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        print(f"policy-reloader: reload failed: {exc}", file=sys.stderr, flush=True)
        return False


def main() -> int:
    directory = Path(os.environ.get("POLICIES_DIR", "/app/policies"))
    url = os.environ.get("RELOAD_URL", "http://127.0.0.1:8080/admin/reload")
    key = os.environ.get("GATEWAY_ADMIN_KEY", "")
    interval = float(os.environ.get("INTERVAL_S", "10"))
    if not key:
        print("policy-reloader: GATEWAY_ADMIN_KEY is empty; /admin is disabled", file=sys.stderr)
        return 2
    applied = digest(directory)
    print(f"policy-reloader: watching {directory} ({applied[:12]})", flush=True)
    while True:
        time.sleep(interval)
        try:
            current = digest(directory)
        except OSError as exc:  # mid-swap; try again next tick
            print(f"policy-reloader: cannot read policies: {exc}", file=sys.stderr, flush=True)
            continue
        if current != applied and reload(url, key):
            print(f"policy-reloader: reloaded ({current[:12]})", flush=True)
            applied = current


if __name__ == "__main__":
    sys.exit(main())
