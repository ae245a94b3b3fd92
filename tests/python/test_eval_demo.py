"""`grass demo` end to end at its smallest size: it runs offline, prints the explanations
and the LDS table, writes the plots, and a second run reuses everything it cached."""
import os
import re
import subprocess
import sys

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


def test_a_second_demo_on_the_same_out_is_refused(tmp_path, capsys):
    """Two demos on one --out would train, cache and write the same files at once: the
    second one is refused at once (exit code 2, the first one named); a killed first run
    leaves no stale lock."""
    out = tmp_path / "demo"
    first = subprocess.Popen([sys.executable, "-m", "grass.cli", "demo", "--size", "tiny", "--models", "12",
                              "--out", str(out), "--quiet", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline()  # printed once the first run holds the lock
        assert line, first.stderr.read()
        assert demo.main(["--size", "tiny", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert (f"grass demo: process {first.pid} is already running a demo in {str(out)!r} "
                f"(it holds {str(out / demo.LOCK)!r}); wait for it to finish, or pass another --out") in err
        assert first.poll() is None, "the first run must still be running for this test to mean anything"
    finally:
        first.kill()
        first.wait()
    with demo.lock_output(str(out)):  # free again once the holder has gone (even by SIGKILL)
        pass
