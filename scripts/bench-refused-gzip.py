#!/usr/bin/env python3
"""Posts N unauthenticated gzip bodies (4 KiB that inflate to just under 8 MiB) to a collector
that requires an ingest key, one connection each, and prints the statuses. Measure the
collector's CPU time around it (BENCHMARKS.md, "Refused requests") to see what a refused
request costs: nothing is inflated when the key is checked from the request head.

usage: scripts/bench-refused-gzip.py PORT N
"""
import gzip, http.client, sys, time
port = int(sys.argv[1]); n = int(sys.argv[2])
body = gzip.compress(b" " * (8 << 20 - 1))  # just under the 8 MiB decompressed limit
statuses = {}
for i in range(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", "/v1/beacons", body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        s = c.getresponse().status
    except Exception as e:
        s = type(e).__name__
    statuses[s] = statuses.get(s, 0) + 1
    c.close()
print(len(body), statuses)
