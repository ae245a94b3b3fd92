"""The LDS ground truth: cached, reproducible from a seed, resumable after a hard kill,
never reused under another configuration; and LDS itself: exact influence scores well
above 0, a shuffled-score control at 0."""
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from grass.eval import exact, lds, objectives, presets, train  # noqa: E402

TINY = presets.get("tiny")


@pytest.fixture(scope="module")
def split():
    return TINY.split()


@pytest.fixture(scope="module")
def ground_truth(split, tmp_path_factory):
    gt = lds.GroundTruth(str(tmp_path_factory.mktemp("gt")), split, TINY.ground_truth_config(split))
    return gt.build(progress=False, threads=1)


def test_subsets_are_reproducible_and_of_size_alpha_n():
    a = lds.subset_indices(100, 5, 0.5, seed=3)
    assert a.shape == (5, 50)
    np.testing.assert_array_equal(a, lds.subset_indices(100, 5, 0.5, seed=3))
    assert not np.array_equal(a, lds.subset_indices(100, 5, 0.5, seed=4))
    for row in a:
        assert len(set(row.tolist())) == 50
    masks = lds.subset_masks(a, 100)
    assert (masks.sum(1) == 50).all() and masks[0, a[0]].all()


_CHILD = textwrap.dedent("""
    import dataclasses, sys
    from grass.eval import lds, presets
    p = presets.get("tiny")
    s = p.split()
    cfg = dataclasses.replace(p.ground_truth_config(s), n_models=12)
    lds.GroundTruth(sys.argv[1], s, cfg).build(progress=False, threads=1)
""")


def _config(split, n_models):
    return dataclasses.replace(TINY.ground_truth_config(split), n_models=n_models)


def test_ground_truth_resumes_after_sigkill_without_redoing_models(split, tmp_path):
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    models_dir = killed_dir / "models"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            done = [f for f in os.listdir(models_dir) if f.endswith(".npz")] if models_dir.exists() else []
            if len(done) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0, "the child finished before it could be killed; the test is void"

    gt = lds.GroundTruth(str(killed_dir), split, _config(split, 12))
    finished = gt.finished()
    assert 3 <= len(finished) < 12
    # a half-written model never counts: only complete files, each loadable
    stamps = {m: os.stat(gt._path(m)).st_mtime_ns for m in finished}
    trained = []
    original = gt.train_one
    gt.train_one = lambda m: (trained.append(m), original(m))[1]
    gt.build(progress=False, threads=1)
    assert sorted(trained) == sorted(set(range(12)) - set(finished))
    assert all(os.stat(gt._path(m)).st_mtime_ns == stamps[m] for m in finished)

    fresh = lds.GroundTruth(str(tmp_path / "fresh"), split, _config(split, 12)).build(progress=False, threads=1)
    m1, t1 = gt.load()
    m2, t2 = fresh.load()
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(t1, t2, rtol=1e-5, atol=1e-5)   # reproducible from the seed


def test_ground_truth_refuses_another_configuration(split, tmp_path):
    lds.GroundTruth(str(tmp_path), split, _config(split, 3)).build(progress=False, max_models=1, threads=1)
    with pytest.raises(ValueError, match="n_models"):
        lds.GroundTruth(str(tmp_path), split, _config(split, 4))
    other = TINY.split(seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        lds.GroundTruth(str(tmp_path), other, _config(other, 3))
    with pytest.raises(RuntimeError, match="incomplete"):
        lds.GroundTruth(str(tmp_path), split, _config(split, 3)).load()


def test_keyboard_interrupt_keeps_finished_models(split, tmp_path):
    gt = lds.GroundTruth(str(tmp_path), split, _config(split, 5))
    original, calls = gt.train_one, []

    def flaky(m):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(m)
        return original(m)

    gt.train_one = flaky
    with pytest.raises(KeyboardInterrupt, match="2 of 5 models are saved"):
        gt.build(progress=False)
    assert gt.finished() == [0, 1]


def test_lds_of_exact_influence_is_well_above_zero_and_shuffled_is_zero(split, ground_truth):
    masks, targets = ground_truth.load()
    val, rep = lds.split_test(split.n_test, TINY.n_val)
    model = train.fit(ground_truth.config.model, split.x_train, split.y_train, TINY.train, seed=TINY.model_seed)
    ex = exact.KernelExactInfluence(model, objectives.cross_entropy, split.x_train, split.y_train)

    def scores_at(d, index):
        return ex.fit(d).scores(split.x_test[index], split.y_test[index], objectives.margin).numpy()

    best, table = lds.choose_damping(lambda d: scores_at(d, val), [0.01, 0.1, 1.0, 10.0],
                                     masks, targets[:, val])
    assert set(table) == {0.01, 0.1, 1.0, 10.0}
    scores = scores_at(best, rep)
    result = lds.score_lds(scores, masks, targets, rep)
    assert result.mean > 0.3, result.estimate
    assert result.estimate.low < result.mean < result.estimate.high

    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(row) for row in scores])
    control = lds.score_lds(shuffled, masks, targets, rep)
    assert abs(control.mean) < 0.08, control.estimate
    # negated scores rank the subsets backwards
    assert lds.score_lds(-scores, masks, targets, rep).mean == pytest.approx(-result.mean)
