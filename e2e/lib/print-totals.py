"""Reads the `key value` lines kafka-console-consumer prints for the region totals and
shows the latest total per region every few seconds (the pipeline updates a region's
total on every order, far too often to read line by line)."""
import json
import sys
import time

EVERY_SECS = 5
latest = {}
updates = 0
shown_at = time.monotonic()


def show():
    stamp = time.strftime("%H:%M:%S")
    print(f"\n  {stamp}  {updates} total updates read; latest per region:", flush=True)
    for region in sorted(latest):
        print(f"    {region:<12} {latest[region]:>14.2f}", flush=True)


for line in sys.stdin:
    key, _, value = line.strip().partition(" ")
    try:
        record = json.loads(value)
        region = str(record.get("region", key))
        latest[region] = float(record["total"])
        updates += 1
    except (ValueError, KeyError, TypeError):
        print("  not a total: " + line.strip(), flush=True)
        continue
    if time.monotonic() - shown_at >= EVERY_SECS:
        show()
        shown_at = time.monotonic()
