"""``python -m streamworker.observability.probe [/ready|/live]``: a health check for containers.

Slim images have no curl; this asks the running supervisor's health server (at
``$STREAMWORKER_HEALTH_ADDR``, default ``0.0.0.0:8082``, reached through loopback) and exits 0 on
HTTP 200, 1 otherwise, printing the server's reasons to stderr so ``docker inspect`` shows them.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from streamworker.observability.health import DEFAULT_HEALTH_ADDR, HEALTH_ADDR_ENV, parse_health_address

TIMEOUT_SECONDS = 3.0


def probe_url(address_text: str, path: str) -> str:
    address = parse_health_address(address_text)
    if address is None:
        raise ValueError(f"{HEALTH_ADDR_ENV} is off: there is no health server to ask")
    # A wildcard address listens on loopback too; a specific one must be asked where it listens.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{address.port}/{path.lstrip('/')}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else "/ready"
    try:
        url = probe_url(os.environ.get(HEALTH_ADDR_ENV, DEFAULT_HEALTH_ADDR), path)
    except ValueError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 and friends
        print(f"probe: {url}: {exc.code} {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
