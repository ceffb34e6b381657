"""GET one URL at a fixed rate over one keep-alive connection; print the latencies as JSON.

    python -m bench.paced_client --url http://127.0.0.1:P/api/vram/status --rate 100 --seconds 2
        [--header "Authorization: Bearer T"]
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    url = urlsplit(args.url)
    headers = dict(h.split(": ", 1) for h in args.header)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.connect()
    latencies, non_2xx = [], 0
    period = 1.0 / args.rate
    start = time.monotonic()
    due = start
    while due < start + args.seconds:
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        t0 = time.perf_counter()
        conn.request("GET", url.path, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        non_2xx += not 200 <= response.status < 300
        due += period
    conn.close()
    print(json.dumps({"requests": len(latencies), "non_2xx": non_2xx, "latencies_ms": latencies}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
