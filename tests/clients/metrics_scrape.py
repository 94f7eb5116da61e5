"""Scrapes culvert's metrics listener and parses the answer with the Prometheus project's
own Python parser (prometheus_client), so the format is checked by code written by others.

Usage: metrics_scrape.py URL. Prints one JSON object per sample
({"name", "labels", "value"}), then "metrics: parsed N samples". Exits non-zero when the
answer is not Prometheus text or is served with another content type.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=30) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    if not content_type.startswith("text/plain; version=0.0.4"):
        sys.exit(f"unexpected content type {content_type!r}")
    count = 0
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            print(json.dumps({
                "name": sample.name,
                "type": family.type,
                "labels": sample.labels,
                "value": sample.value,
            }))
            count += 1
    if count == 0:
        sys.exit("no samples")
    print(f"metrics: parsed {count} samples")


if __name__ == "__main__":
    main()
