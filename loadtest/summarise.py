"""Locust's CSV (`--csv <prefix>`) as a per-effort table and PNG charts.

    python -m loadtest.summarise bench-results/loadtest

reads `<prefix>_stats.csv` (and `<prefix>_stats_history.csv` for the timeline), prints the table,
and writes `<prefix>_summary.md`, `<prefix>_latency.png` and `<prefix>_timeline.png`. The custom
events of the locustfile carry the latencies a reasoning model's user sees: TTFT, TTFA (first answer
token), ITL and STREAM by effort, and SLO verdicts.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True)
class EffortSummary:
    effort: str
    requests: int
    failures: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttfa_p50_s: float | None
    ttfa_p95_s: float | None
    itl_p50_ms: float | None
    stream_p95_s: float | None
    slo_met: int
    slo_missed: int

    @property
    def attainment(self) -> float | None:
        judged = self.slo_met + self.slo_missed
        return self.slo_met / judged if judged else None


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _ms(row: dict[str, str] | None, column: str) -> float | None:
    if row is None or not row.get(column) or row[column] == "N/A":
        return None
    return float(row[column])


def summarise(rows: list[dict[str, str]]) -> list[EffortSummary]:
    """One summary per effort seen in Locust's stats rows."""
    by = {(r["Type"], r["Name"]): r for r in rows}

    def seconds(kind: str, effort: str, column: str) -> float | None:
        value = _ms(by.get((kind, effort)), column)
        return None if value is None else value / 1000

    def verdicts(effort: str, verdict: str) -> int:
        row = by.get(("SLO", f"{effort} {verdict}"))
        return int(row["Request Count"]) if row else 0

    out = []
    for e in EFFORTS:
        if (chat := by.get(("POST", f"chat {e}"))) is None:
            continue
        out.append(EffortSummary(
            effort=e, requests=int(chat["Request Count"]), failures=int(chat["Failure Count"]),
            ttft_p50_s=seconds("TTFT", e, "50%"), ttft_p95_s=seconds("TTFT", e, "95%"),
            ttfa_p50_s=seconds("TTFA", e, "50%"), ttfa_p95_s=seconds("TTFA", e, "95%"),
            itl_p50_ms=_ms(by.get(("ITL", e)), "50%"), stream_p95_s=seconds("STREAM", e, "95%"),
            slo_met=verdicts(e, "met"), slo_missed=verdicts(e, "missed"),
        ))  # fmt: skip
    return out


def markdown(summaries: list[EffortSummary]) -> str:
    def f(value: float | None, unit: str = "s") -> str:
        return "-" if value is None else f"{value:.2f} {unit}".rstrip()

    lines = [
        (
            "| effort | requests | failed | TTFT p50 / p95 | first answer token p50 / p95 "
            "| ITL p50 | stream p95 | within SLO |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        slo = "-" if s.attainment is None else f"{s.attainment:.1%}"
        lines.append(
            f"| {s.effort} | {s.requests} | {s.failures} | {f(s.ttft_p50_s)} / {f(s.ttft_p95_s)} "
            f"| {f(s.ttfa_p50_s)} / {f(s.ttfa_p95_s)} | {f(s.itl_p50_ms, 'ms')} "
            f"| {f(s.stream_p95_s)} | {slo} |"
        )
    return "\n".join(lines) + "\n"


def plot_latency(summaries: list[EffortSummary], path: Path) -> None:
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    names = [s.effort for s in summaries]
    series = {
        "TTFT p95": [s.ttft_p95_s or 0 for s in summaries],
        "first answer token p95": [s.ttfa_p95_s or 0 for s in summaries],
        "stream p95": [s.stream_p95_s or 0 for s in summaries],
    }
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width for x in range(len(names))], names)
    ax.set(ylabel="seconds", title="latency by reasoning effort")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_timeline(history: list[dict[str, str]], path: Path) -> None:
    """Requests/s by effort (Locust's `--csv-full-history` rows), failures/s and users."""
    total = [r for r in history if r["Name"] == "Aggregated"]
    if not total:
        return
    t0 = int(total[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in total]
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    for effort in EFFORTS:
        rows = [r for r in history if r["Type"] == "POST" and r["Name"] == f"chat {effort}"]
        if rows:
            ax.plot([int(r["Timestamp"]) - t0 for r in rows],
                    [float(r["Requests/s"]) for r in rows], label=f"{effort} requests/s")  # fmt: skip
    failures = [r for r in history if r["Type"] == "POST"] or total
    by_time: dict[int, float] = {}
    for r in failures:
        by_time[int(r["Timestamp"]) - t0] = by_time.get(int(r["Timestamp"]) - t0, 0.0) + float(
            r["Failures/s"]
        )
    ax.plot(list(by_time), list(by_time.values()), label="failures/s")
    users = ax.twinx()
    users.step(t, [int(r["User Count"]) for r in total], color="grey", where="post")
    users.set_ylabel("users")
    ax.set(xlabel="seconds", title="load over time")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(prefix: str) -> list[EffortSummary]:
    summaries = summarise(read_rows(Path(f"{prefix}_stats.csv")))
    table = markdown(summaries)
    print(table, end="")
    Path(f"{prefix}_summary.md").write_text(table)
    plot_latency(summaries, Path(f"{prefix}_latency.png"))
    history = Path(f"{prefix}_stats_history.csv")
    if history.is_file():
        plot_timeline(read_rows(history), Path(f"{prefix}_timeline.png"))
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefix", help="the --csv prefix Locust wrote")
    run(parser.parse_args().prefix)


if __name__ == "__main__":
    main()
