"""The bench's figures as pictures, beside its text report: HTTP throughput and latency against client count
(one line per worker count), the Kafka ingestor's results per second over time, and webhook delivery lag over
time. Drawn from the report's JSON, so an old report can be drawn again: `python -m bench.plots REPORT.json`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def ingest_layout(run: dict) -> str:
    """A kafka-ingest run's processes in words, for the table and the plot: `2 worker(s)`, and `× C consumers`
    when the run set them."""
    consumers = run.get("consumers_per_worker")
    return f"{run.get('workers', 1)} worker(s)" + (f" × {consumers} consumers" if consumers else "")


def draw(report: dict, stem: Path) -> list[Path]:
    """PNG files `<stem>-<figure>.png` for what the report holds; none when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", file=sys.stderr)
        return []
    title = f"slotledger bench ({report['mode']}, {report['started']}, {report['machine']['cores']} cores)"
    written = []

    def save(fig, name: str) -> None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = stem.parent / f"{stem.name}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    spread = report.get("http_spread") or []
    if spread:
        fig, (rate, latency) = plt.subplots(1, 2, figsize=(10, 4))
        for workers in sorted({s.get("workers", 1) for s in spread}):
            runs = sorted((s for s in spread if s.get("workers", 1) == workers), key=lambda s: s["clients"])
            clients = [s["clients"] for s in runs]
            rate.plot(clients, [s["creates_per_s"] for s in runs], marker="o", label=f"{workers} worker(s)")
            for p, style in (("p50", "-"), ("p99", "--")):
                latency.plot(clients, [s["latency_ms"][p] for s in runs], style, marker="o",
                             label=f"{p}, {workers} worker(s)")
        ceiling = report.get("ceiling_pgbench_tps", {})
        if ceiling:
            points = sorted((int(k), v) for k, v in ceiling.items())
            rate.plot([k for k, _ in points], [v / 10 for _, v in points], ":", color="grey",
                      label="pgbench one-row INSERT ÷ 10")
        rate.axhline(1500, color="red", linewidth=0.8, label="target at 64 clients")
        latency.axhline(50, color="red", linewidth=0.8, label="p99 target")
        for axis, label in ((rate, "HTTP creates/s"), (latency, "latency, ms")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("clients")
            axis.set_ylabel(label)
            axis.legend(fontsize=7)
            axis.grid(alpha=0.3)
        save(fig, "http")

    ingests = report.get("kafka_ingest") or []
    if any("results_per_second" in k for k in ingests):
        fig, axis = plt.subplots(figsize=(8, 4))
        for k in ingests:
            series = k.get("results_per_second") or []
            axis.plot([t for t, _ in series], [n for _, n in series], marker=".",
                      label=f"{ingest_layout(k)}: {k['commands_per_s']:,.0f} cmd/s")
        axis.axhline(10_000, color="red", linewidth=0.8, label="target")
        axis.set_xlabel("seconds since the first result")
        axis.set_ylabel("command results per second")
        axis.set_title(f"Kafka ingestion of {ingests[0]['commands']:,} queued creates", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
        save(fig, "kafka")

    for name, lags, title in (
            ("webhook-lag", report.get("webhooks") or {}, "webhook delivery lag under http-spread 16"),
            ("relay-lag", next((s["relay_lag"] for s in report.get("http_spread", []) if "relay_lag" in s), {}),
             "relay lag (commit → on the events topic) under http-spread 64, 1 worker")):
        if lags.get("lag_over_time"):
            fig, axis = plt.subplots(figsize=(8, 4))
            series = lags["lag_over_time"]
            axis.plot([t for t, _ in series], [lag for _, lag in series], ".", markersize=2)
            axis.set_xlabel("seconds since the first receipt")
            axis.set_ylabel("commit → receipt, ms")
            axis.set_title(f"{title} (p99 {lags['lag_ms']['p99']} ms)", fontsize=9)
            axis.grid(alpha=0.3)
            save(fig, name)
    return written


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        source = Path(argument)
        for png in draw(json.loads(source.read_text()), source.with_suffix("")):
            print(png)
