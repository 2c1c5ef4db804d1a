"""EventWriter: smoothed medians, an ETA from the median iteration time, a checkpointable window."""

from __future__ import annotations

import json

import pytest

from san.engine.events import EventWriter


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eta_is_the_median_iteration_time_times_the_iterations_left(tmp_path):
    w = EventWriter(str(tmp_path), max_iter=10, window=3, tensorboard=False)
    times = [1.0, 5.0, 2.0, 2.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    for it, t in enumerate(times):
        w.put(it, time=t, loss=float(it))
        w.write(it)
    lines = _lines(tmp_path / "metrics.json")
    for it, m in enumerate(lines):
        recent = sorted(times[max(0, it - 2) : it + 1])
        median = recent[len(recent) // 2] if len(recent) % 2 else (recent[0] + recent[1]) / 2
        assert m["time"] == median and m["eta_seconds"] == pytest.approx(median * (10 - it - 1))
        assert m["loss"] == ([0.0, 0.5][it] if it < 2 else it - 1)  # the median of the last 3 losses
    etas = [m["eta_seconds"] for m in lines]
    assert etas[-1] == 0 and all(a > b for a, b in zip(etas[5:], etas[6:]))  # steady times: falls each iteration


def test_state_dict_restores_the_smoothing_window(tmp_path):
    a = EventWriter(None, max_iter=20, window=4, tensorboard=False)
    for it in range(6):
        a.put(it, total_loss=10.0 - it * it, time=0.5 + it)
    b = EventWriter(None, max_iter=20, window=4, tensorboard=False)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # survives serialisation
    for w in (a, b):
        w.put(6, total_loss=1.0, time=0.1)
    assert b.smoothed("total_loss") == a.smoothed("total_loss") == (1.0 - 6.0) / 2  # of 1, -6, -15, 1
    assert b.eta_seconds(6) == a.eta_seconds(6) and b.latest == a.latest
    small = EventWriter(None, max_iter=20, window=2, tensorboard=False)
    small.load_state_dict(a.state_dict())
    assert list(small.history["total_loss"]) == [-15.0, 1.0]  # a shorter window keeps the newest values
