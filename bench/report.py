"""BENCHMARKS.md and the plots, regenerated from ``bench/results/latest.json``.

    python -m bench.report [--results bench/results/latest.json]

The text around the tables (findings, profiles) lives in
``bench/findings.md`` and is copied in unchanged, so a rerun never loses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
PLOTS = ROOT / "bench" / "results"
FINDINGS = ROOT / "bench" / "findings.md"
LABELS = {
    "connector": "connector",
    "adaptive": "connector, adaptive",
    "greedy": "connector, greedy",
    "baseline_a": "(a) direct, batch of 1",
    "baseline_b": "(b) in-process batcher",
}


def _ratio(value: float | None, other: float | None) -> str:
    if not value or not other:
        return "-"
    return f"{value / other:.2f}x"


def _row(name: str, f: dict[str, Any], ideal: float, ref: dict[str, Any]) -> str:
    lat = f["latency_s"]
    memory = ", ".join(
        f"{proc} {m['max_mb']:.0f}" for proc, m in f.get("memory", {}).items()
    )
    bps = f.get("backend_seconds_per_image")
    ref_a = ref.get("baseline_a", {})
    ref_b = ref.get("baseline_b", {})
    cells = [
        LABELS.get(name, name),
        f"{f['throughput_per_s']:.1f}",
        f"{f['throughput_per_s'] / ideal:.0%}" if ideal else "-",
        _ratio(f["throughput_per_s"], ref_a.get("throughput_per_s")),
        _ratio(f["throughput_per_s"], ref_b.get("throughput_per_s")),
        f"{lat['p50']:.3f}",
        f"{lat['p90']:.3f}",
        f"{lat['p99']:.3f}",
        f"{f['mean_batch_size'] or 0:.1f}",
        f"{bps:.4f}" if bps else "-",
        f"{f['ok']}/{f['requests']}",
        memory or "-",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| run | images/s | of ideal | vs (a) | vs (b) | p50 s | p90 s | p99 s "
    "| mean batch | backend s/image | ok/sent | max RSS MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table(runs: dict[str, Any], ideal: float) -> str:
    rows = [
        _row(name, figures, ideal, runs)
        for name, figures in runs.items()
        if isinstance(figures, dict) and "latency_s" in figures
    ]
    return HEADER + "\n" + "\n".join(rows)


def plot_cdf(results: dict[str, Any], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, name in zip(axes, ("saturation", "medium"), strict=True):
        runs = results["scenarios"].get(name, {})
        for run_name, figures in runs.items():
            if not isinstance(figures, dict) or not figures.get("latencies"):
                continue
            values = sorted(figures["latencies"])
            fraction = [(i + 1) / len(values) for i in range(len(values))]
            axis.plot(values, fraction, label=LABELS.get(run_name, run_name))
        axis.set_title(f"latency CDF, {name}")
        axis.set_xlabel("end-to-end latency (s)")
        axis.set_ylabel("fraction of requests")
        axis.set_xscale("log")
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_throughput(results: dict[str, Any], out: Path) -> None:
    sweep = results["scenarios"].get("sweep", {})
    ideal = results["ideal_per_s"]
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for run_name, points in sweep.items():
        if not isinstance(points, list):
            continue
        offered = [p["offered_per_s"] for p in points]
        achieved = [p["throughput_per_s"] for p in points]
        axis.plot(offered, achieved, marker="o", label=LABELS.get(run_name, run_name))
    top = max(
        [ideal * 1.3]
        + [p["offered_per_s"] for v in sweep.values() if isinstance(v, list) for p in v]
    )
    axis.plot([0, top], [0, top], color="grey", linestyle=":", label="offered")
    axis.axhline(ideal, color="red", linestyle="--", label=f"ideal {ideal:.1f}/s")
    axis.set_xlabel("offered load (images/s, Poisson)")
    axis.set_ylabel("answered (images/s)")
    axis.set_title("throughput against offered load")
    axis.grid(True, alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def verdicts(results: dict[str, Any]) -> list[str]:
    """Each target of the benchmark, met or missed and by how much."""
    s = results["scenarios"]
    ideal = results["ideal_per_s"]
    lines: list[str] = []

    def say(ok: bool, text: str) -> None:
        lines.append(f"- {'met' if ok else '**missed**'}: {text}")

    if sat := s.get("saturation"):
        c, a, b = sat["connector"], sat["baseline_a"], sat["baseline_b"]
        t = c["throughput_per_s"]
        say(
            t >= 0.95 * ideal,
            f"saturation throughput {t:.1f}/s = {t / ideal:.0%} of ideal (target 95%)",
        )
        say(
            t >= 8 * a["throughput_per_s"],
            f"saturation vs direct proxy: {t / a['throughput_per_s']:.1f}x (target 8x)",
        )
        say(
            t >= 0.9 * b["throughput_per_s"],
            f"saturation vs in-process batcher: {t / b['throughput_per_s']:.0%} "
            "(target within 10%)",
        )
    if light := s.get("light"):
        o = light["connector"]["overhead_s"]
        say(
            o["p50"] <= 0.010,
            f"light-load overhead p50 {o['p50'] * 1000:.1f} ms (target 10 ms)",
        )
        say(
            o["p99"] <= 0.030,
            f"light-load overhead p99 {o['p99'] * 1000:.1f} ms (target 30 ms)",
        )
    if med := s.get("medium"):
        ad, gr = med["adaptive"], med["greedy"]
        if ad.get("backend_seconds_per_image") and gr.get("backend_seconds_per_image"):
            saving = (
                1 - ad["backend_seconds_per_image"] / gr["backend_seconds_per_image"]
            )
            say(
                saving >= 0.30,
                f"medium load: adaptive spends {saving:.0%} fewer backend-seconds "
                "per image than greedy (target 30%)",
            )
        say(
            ad["latency_s"]["p99"] <= 2.0,
            f"medium load p99 {ad['latency_s']['p99']:.2f} s (target 2 s)",
        )
    if mem := s.get("memory"):
        m = mem["connector"]["memory"]
        api, worker = m.get("api", {}), m.get("worker", {})
        say(
            api.get("max_mb", 1e9) <= 300,
            f"API RSS max {api.get('max_mb', 0):.0f} MiB (target 300)",
        )
        say(
            worker.get("max_mb", 1e9) <= 400,
            f"worker RSS max {worker.get('max_mb', 0):.0f} MiB (target 400)",
        )
    if cap := s.get("capacity"):
        t = cap["connector"]["throughput_per_s"]
        say(t >= 1000, f"raw capacity {t:.0f} requests/s end to end (target 1,000)")
    return lines


def render(results: dict[str, Any]) -> str:
    ideal = results["ideal_per_s"]
    cost = results["cost_model"]
    m = results["machine"]
    parts = [
        "# Benchmarks",
        "",
        "Regenerated by `task bench` (`python -m bench.run && python -m bench.report`) "
        "from `bench/results/latest.json`; do not edit the tables by hand.",
        "",
        f"Machine: {m['platform']}, Python {m['python']}, {m['cpus']} CPUs, "
        f"{m['memory_gb']} GiB, run {m['date']}; the load generator, Kafka, Redis, "
        f"the simulator and the services under test all share these CPUs. "
        f"Whole run: {results.get('wall_time_s', 0):.0f} s.",
        "",
        f"Cost model of the simulated backend: {cost}; ideal saturated "
        f"throughput {ideal:.1f} images/s, ideal backend-seconds per image "
        f"{(cost['fixed_ms'] / 32 + cost['per_image_ms']) / 1000:.4f}.",
        "",
        "## Targets",
        "",
        *verdicts(results),
        "",
    ]
    for name, runs in results["scenarios"].items():
        if name == "sweep":
            continue
        parts += [f"## {name}", "", table(runs, ideal), ""]
        if name == "light":
            for run_name, f in runs.items():
                o = f.get("overhead_s")
                if o:
                    parts.append(
                        f"- {LABELS.get(run_name, run_name)}: latency beyond the "
                        f"backend's batch time p50 {o['p50'] * 1000:.1f} ms, "
                        f"p99 {o['p99'] * 1000:.1f} ms"
                    )
            parts.append("")
        if name == "memory":
            for proc, m in runs["connector"].get("memory", {}).items():
                parts.append(
                    f"- {proc}: max {m['max_mb']:.0f} MiB; first half "
                    f"{m['first_half_max_mb']:.0f}, "
                    f"second half {m['second_half_max_mb']:.0f}"
                )
            parts.append("")
    parts += [
        "![throughput against offered load](bench/results/throughput.png)",
        "",
        "![latency CDF](bench/results/latency_cdf.png)",
        "",
    ]
    if FINDINGS.exists():
        parts += [FINDINGS.read_text().strip(), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    plot_cdf(results, PLOTS / "latency_cdf.png")
    plot_throughput(results, PLOTS / "throughput.png")
    (ROOT / "BENCHMARKS.md").write_text(render(results))
    print("wrote BENCHMARKS.md and", PLOTS)


if __name__ == "__main__":
    main()
