#!/usr/bin/env python3
"""Markdown comparison table from culvert-bench JSON files: DIR/<scenario>.<server>.json.

Usage: scripts/bench-table.py DIR [BASELINE_LABEL] (default baseline: synapse). One row per
figure that matters, the median of each server, and culvert's ratio to every other server
(Conduit, when it was run, and the baseline).
"""

import json
import re
import sys
from pathlib import Path

# Per scenario kind: (figure, unit, which way is better).
FIGURES = {
    "send": [
        ("events_per_s", "events/s", "higher"),
        ("send_p50_ms", "ms", "lower"),
        ("send_p95_ms", "ms", "lower"),
        ("send_p99_ms", "ms", "lower"),
        ("errors", "", "lower"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
        ("server_cpu_seconds", "s CPU", "lower"),
        ("bench_tool_cpu_seconds", "s CPU", "info"),
    ],
    "deliver": [
        ("deliver_p50_ms", "ms", "lower"),
        ("deliver_p99_ms", "ms", "lower"),
        ("deliver_from_request_p50_ms", "ms", "lower"),
        ("send_p50_ms", "ms", "lower"),
        ("lost", "", "lower"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
        ("server_cpu_percent", "% of a core", "lower"),
    ],
    "initial-sync": [
        ("sync_p50_ms", "ms", "lower"),
        ("sync_bytes", "bytes", "lower"),
        ("rooms_seen", "", "same"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
    ],
    "idle": [
        ("server_rss_before_clients_mib", "MiB", "lower"),
        ("server_rss_anon_before_clients_mib", "MiB", "lower"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
        ("server_rss_mean_mib", "MiB", "lower"),
        ("server_cpu_percent", "% of a core", "lower"),
        ("connected", "", "same"),
    ],
    "history": [
        ("total_ms", "ms", "lower"),
        ("events_per_s", "events/s", "higher"),
        ("page_p50_ms", "ms", "lower"),
        ("page_p99_ms", "ms", "lower"),
        ("messages_seen", "", "same"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
    ],
    "sliding-initial": [
        ("first_p50_ms", "ms", "lower"),
        ("first_p99_ms", "ms", "lower"),
        ("first_bytes", "bytes", "lower"),
        ("first_rooms", "", "same"),
        ("list_total_ms", "ms", "lower"),
        ("list_requests", "", "same"),
        ("list_rooms_received", "", "same"),
        ("list_bytes", "bytes", "lower"),
        ("server_rss_peak_mib", "MiB", "lower"),
        ("server_rss_anon_peak_mib", "MiB", "lower"),
        ("server_cpu_seconds", "s CPU", "lower"),
    ],
}
FIGURES["push"] = [
    ("events_per_s", "events/s", "higher"),
    ("send_p50_ms", "ms", "lower"),
    ("send_p99_ms", "ms", "lower"),
    ("push_p50_ms", "ms", "lower"),
    ("push_p99_ms", "ms", "lower"),
    ("drain_s", "s", "lower"),
    ("pushes_per_s", "requests/s", "higher"),
    ("lost", "", "lower"),
    ("duplicates", "", "lower"),
    ("server_rss_peak_mib", "MiB", "lower"),
    ("server_rss_anon_peak_mib", "MiB", "lower"),
    ("server_cpu_seconds", "s CPU", "lower"),
]
FIGURES["sliding-deliver"] = FIGURES["deliver"][:5] + [("skipped", "", "lower")] + FIGURES["deliver"][5:]
ORDER = ["send", "deliver", "initial-sync", "idle", "history", "sliding-initial", "sliding-deliver", "push"]
# Checked figures: what a server must have answered for its timings to count. A server that
# returned fewer rooms than the user is in did less work; it is flagged, not ranked.
CHECKS = {
    "initial-sync": ("rooms_seen", "rooms"),
    "sliding-initial": ("list_rooms_received", "rooms"),
}


def incomplete(report):
    """Why a report's timings do not count (None when they do)."""
    check = CHECKS.get(report.get("scenario"))
    if not check:
        return None
    figure, param = check
    seen = report.get("median", {}).get(figure)
    wanted = report.get("params", {}).get(param)
    if seen is None or wanted is None or seen >= wanted:
        return None
    return f"{figure} {seen:,.0f} of {wanted:,.0f}"


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.2f}"


def params(report):
    return " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in report.get("params", {}).items()
        if v is not None
    )


def main():
    out = Path(sys.argv[1])
    baseline = sys.argv[2] if len(sys.argv) > 2 else "synapse"
    reports = {}
    for path in out.glob("*.json"):
        m = re.fullmatch(r"(.+)\.([a-z0-9_-]+)\.json", path.name)
        if m:
            reports.setdefault(m.group(1), {})[m.group(2)] = json.loads(path.read_text())

    def key(name):
        kind = next((k for k in ORDER if name.startswith(k)), name)
        nums = re.findall(r"\d+", name)
        return (ORDER.index(kind) if kind in ORDER else 99, int(nums[0]) if nums else 0, name)

    # culvert, then its variants (e.g. culvert-mmap128k: run with BENCH_CULVERT_LABEL), then the
    # other servers (e.g. conduit), the baseline last; a culvert/X ratio for every other server.
    labels = {label for by_server in reports.values() for label in by_server}
    ours_labels = ["culvert"] + sorted(l for l in labels if l.startswith("culvert-"))
    others = sorted(l for l in labels if not l.startswith("culvert") and l != baseline)
    theirs_labels = others + [baseline]
    lines = [
        "| scenario | figure | "
        + " | ".join(ours_labels + theirs_labels)
        + "".join(f" | culvert/{t}" for t in theirs_labels)
        + " | better |",
        "|---|---|" + "---:|" * (len(ours_labels) + 2 * len(theirs_labels)) + "---|",
    ]
    flagged = []
    for name in sorted(reports, key=key):
        by_server = reports[name]
        unranked = {label: why for label, report in by_server.items() if (why := incomplete(report))}
        flagged += [f"{name}, {label}: {why}" for label, why in sorted(unranked.items())]
        any_report = next(iter(by_server.values()))
        kind = any_report["scenario"]
        first = True
        for figure, unit, better in FIGURES.get(kind, []):
            ours = [by_server.get(l, {}).get("median", {}).get(figure) for l in ours_labels]
            theirs = [by_server.get(l, {}).get("median", {}).get(figure) for l in theirs_labels]
            if all(v is None for v in ours + theirs):
                continue
            # The ratios are of the first culvert column that has the figure.
            mine_label = next((l for l, v in zip(ours_labels, ours) if v is not None), None)
            mine = next((v for v in ours if v is not None), None)
            ratios = []
            for other_label, other in zip(theirs_labels, theirs):
                if better != "same" and (mine_label in unranked or other_label in unranked):
                    ratios.append("not ranked")
                    continue
                # A ratio means something only for two positive figures (delivery measured
                # from the send's 200 can be negative: the sync answered before the sender's
                # response).
                if mine is not None and other is not None and mine > 0 and other > 0:
                    ratios.append(f"{mine / other:.2f}×")
                else:
                    ratios.append("–")
            label = f"**{name}**<br>`{kind} {params(any_report)}`" if first else ""
            first = False
            unit = f" ({unit})" if unit else ""
            cells = " | ".join(fmt(v) for v in ours + theirs)
            lines.append(
                f"| {label} | {figure}{unit} | {cells} | {' | '.join(ratios)} | {better} |"
            )
    if flagged:
        lines.append("")
        lines.append("Not ranked (the server answered less than was asked, so its timings are not comparable):")
        lines += [f"- {line}" for line in flagged]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
