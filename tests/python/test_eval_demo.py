"""`grass demo` end to end at its smallest size: it runs offline, prints the explanations
and the LDS table, writes the plots, and a second run reuses everything it cached."""
import os
import re

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from grass.eval import demo, lds  # noqa: E402


def _lds_rows(text):
    return dict(re.findall(r"^  (FactGraSS|GraSS|Gaussian|TracIn)\b.*?\s(-?\d\.\d{3})  \[", text, re.M))


def test_demo_runs_writes_plots_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    argv = ["--size", "tiny", "--models", "12", "--out", str(out), "--quiet", "--threads", "1"]
    assert demo.main(argv) == 0
    first = capsys.readouterr().out
    assert "most helpful training examples" in first and "most harmful training examples" in first
    rows = _lds_rows(first)
    assert set(rows) == {"FactGraSS", "GraSS", "Gaussian", "TracIn"}, first
    assert float(rows["FactGraSS"]) > 0.25 and float(rows["GraSS"]) > 0.25
    assert re.search(r"GraSS\s+AUC 0\.[89]", first), first
    for png in ("influence_grid.png", "lds_vs_time.png", "mislabel.png"):
        assert (out / png).stat().st_size > 1000

    # A rerun trains no subset model and reprints the same numbers from the caches.
    def no_training(self, *a, **k):
        raise AssertionError("the rerun retrained a ground-truth model")
    monkeypatch.setattr(lds.GroundTruth, "train_one", no_training)
    assert demo.main(argv) == 0
    again = capsys.readouterr().out
    assert _lds_rows(again) == rows


def test_demo_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--size", "huge"])
    assert "invalid choice" in capsys.readouterr().err
