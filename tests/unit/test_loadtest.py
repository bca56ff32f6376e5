"""The Locust summariser on a recorded CSV, and the load shapes on a fake clock."""

from pathlib import Path

import pytest

from loadtest.shapes import SHAPES
from loadtest.summarise import markdown, read_rows, run, summarise

RECORDED = Path(__file__).parent / "locust_recorded"


def test_the_summary_reads_locusts_csv_per_effort():
    rows = read_rows(RECORDED / "smoke_stats.csv")
    by_effort = {s.effort: s for s in summarise(rows)}
    assert list(by_effort) == ["low", "medium", "high"]
    high = by_effort["high"]
    assert (high.requests, high.failures, high.slo_met, high.slo_missed) == (6, 0, 6, 0)
    assert high.ttft_p50_s == pytest.approx(0.053)  # Locust's 50% column, in ms
    assert high.ttfa_p95_s > high.ttft_p95_s  # the answer comes after the reasoning
    assert high.attainment == 1.0
    # A missed verdict lowers attainment; an effort with no requests is left out.
    missed = dict(rows[0], Type="SLO", Name="high missed", **{"Request Count": "2"})
    rows = [r for r in rows if r["Name"] != "chat low"] + [missed]
    by_effort = {s.effort: s for s in summarise(rows)}
    assert "low" not in by_effort and by_effort["high"].attainment == 6 / 8
    table = markdown(list(by_effort.values()))
    assert "| high | 6 | 0 |" in table and "75.0%" in table


def test_run_writes_the_table_and_charts(tmp_path):
    for name in ("smoke_stats.csv", "smoke_stats_history.csv"):
        (tmp_path / name).write_text((RECORDED / name).read_text())
    run(str(tmp_path / "smoke"))
    assert (tmp_path / "smoke_summary.md").read_text().startswith("| effort |")
    for png in ("smoke_latency.png", "smoke_timeline.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


class Clock:
    def __init__(self):
        self.t = 0.0

    def get_run_time(self):
        return self.t


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("step", [(0, 3), (99, 3), (101, 10), (299, 10)]),
        ("spike", [(0, 2), (149, 2), (151, 10), (199, 10), (201, 2)]),
        ("ramp-soak", [(0, 1), (37.5, 5), (75, 10), (299, 10)]),
    ],
)
def test_load_shapes(name, expected, monkeypatch):
    monkeypatch.setenv("LOADTEST_USERS", "10")
    monkeypatch.setenv("LOADTEST_DURATION_S", "300")
    shape = type("Shape", (SHAPES[name], Clock), {})()
    for t, users in expected:
        shape.t = t
        assert shape.tick()[0] == users, (name, t)
    shape.t = 300
    assert shape.tick() is None
