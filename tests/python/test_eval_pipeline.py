"""The evaluation harness wired to the real pipeline, on the tiny preset (seconds):
compressed influence reaches an LDS well above 0 and near the exact influence, finds
flipped labels like the exact influence does, and the removal study resumes from its
cache."""
import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from grass.eval import exact, lds, methods, metrics, mislabel, objectives, presets, removal, study  # noqa: E402

TINY = presets.get("tiny")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    c = study.Context(TINY, str(tmp_path_factory.mktemp("eval")), threads=1, progress=False)
    c.ground_truth()
    return c


@pytest.fixture(scope="module")
def exact_lds(ctx):
    return study.lds_of_exact(ctx)


@pytest.mark.parametrize("name", ["GraSS", "FactGraSS", "SJLT"])
def test_compressed_influence_lds_is_well_above_zero_and_near_exact(ctx, exact_lds, name):
    r = study.lds_of_method(ctx, methods.Method("influence", name, 256))
    assert r["lds"]["mean"] > 0.3, r
    assert r["lds"]["mean"] > exact_lds["lds"]["mean"] - 0.1, (r["lds"], exact_lds["lds"])
    assert r["damping"] in study.DAMPING_GRID  # chosen on the validation examples


def test_shuffled_pipeline_scores_give_zero_lds(ctx):
    s = ctx.split
    run = methods.Run(methods.Method("influence", "GraSS", 256), ctx.model(), s.x_train, s.y_train,
                      str(ctx.out) + "/shuffled", progress=False).prepare().fit()
    scores = run.scores(s.x_test[ctx.rep], s.y_test[ctx.rep]).double().numpy()
    real = ctx.lds(scores, ctx.rep).mean
    rng = np.random.default_rng(1)
    control = ctx.lds(np.stack([rng.permutation(r) for r in scores]), ctx.rep).mean
    assert real > 0.3 and abs(control) < 0.08, (real, control)


def test_pipeline_scores_follow_the_sign_convention_of_the_exact_reference(ctx):
    # Identity compression: the pipeline's influence equals the exact kernel-form influence
    s = ctx.split
    model = ctx.model()
    run = methods.Run(methods.Method("influence", "Identity", 0), model, s.x_train, s.y_train,
                      str(ctx.out) + "/identity", progress=False).prepare().fit(0.1)
    got = run.scores(s.x_test[:5], s.y_test[:5]).double()
    ex = exact.KernelExactInfluence(model, objectives.cross_entropy, s.x_train, s.y_train).fit(0.1)
    want = ex.scores(s.x_test[:5], s.y_test[:5], objectives.margin)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))


def test_compression_time_captures_the_true_per_sample_gradients(ctx):
    s = ctx.split
    model = ctx.model()
    pairs = methods.layer_infos(model)
    mods = [model.get_submodule(i.name) for i in pairs]
    factors = methods._capture_factors(model, objectives.cross_entropy, pairs, mods,
                                       s.x_train[:7], s.y_train[:7], 4)
    from grass import ops
    for j in range(7):
        model.zero_grad()
        objectives.cross_entropy(model, (s.x_train[j:j + 1], s.y_train[j:j + 1])).sum().backward()
        for info, mod in zip(pairs, mods):
            a, g = factors[j // 4][info.name]
            got = ops.kron(a[j % 4:j % 4 + 1].contiguous(), g[j % 4:j % 4 + 1].contiguous(), bias=info.bias)[0]
            want = torch.cat([mod.weight.grad, mod.bias.grad[:, None]], 1).flatten()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    infos = methods.layer_infos(model)
    comps = {n: methods.Method("influence", n, 64).spec().build(infos)
             for n in ("RandomMask", "Gaussian", "FactGraSS")}
    t = methods.compression_time(model, comps, s.x_train[:100], s.y_train[:100], repeats=2,
                                 progress=False)
    assert set(t) == set(comps)
    for v in t.values():
        assert set(v) == {"gradient", "factors"}
        assert all(len(m["runs_s"]) == 2 and m["median_s"] > 0 for m in v.values())


def test_mislabel_detection_with_grass_matches_exact_influence(ctx):
    s = ctx.split
    y_noisy, flipped = mislabel.flip_labels(s.y_train, 0.2, s.classes, seed=0)
    model = ctx.trained("noisy", s.x_train, y_noisy, TINY.model_seed)
    k = 256
    lam = study.matching_damping(model, y_noisy, ctx, k)
    ref = study.mislabel_of_exact(ctx, model, y_noisy, flipped, lam)
    got = study.mislabel_of_method(ctx, model, y_noisy, flipped,
                                         methods.Method("influence", "GraSS", k))
    assert ref["self"]["auc"] > 0.8
    assert abs(got["self"]["auc"] - ref["self"]["auc"]) < 0.05, (got["self"], ref["self"])
    assert got["validation"]["auc"] > 0.6


def test_removal_study_uses_rankings_and_resumes_from_cache(ctx, tmp_path, monkeypatch):
    s = ctx.split
    group = ctx.rep[:40]
    ex = exact.KernelExactInfluence(ctx.model(), objectives.cross_entropy, s.x_train, s.y_train).fit(1.0)
    order = removal.removal_order(removal.helpfulness(ex.scores(s.x_test[group], s.y_test[group],
                                                                objectives.margin)))
    kw = dict(fractions=[0.3], seeds=2, cache_dir=str(tmp_path), progress=False)
    res = removal.run_removal(s, ctx.spec, TINY.train, {"exact": order}, group, **kw)
    summ = removal.summarise_removal(res)
    assert summ["exact"][0.3]["n"] == 2 and summ["random"][0.3]["n"] == 2 and summ["none"][0.0]["n"] == 2
    # removing the most helpful 30% hurts the group more than removing 30% at random
    assert summ["exact"][0.3]["max"] < summ["random"][0.3]["min"], summ

    def boom(*a, **k):
        raise AssertionError("a cached retraining was redone")
    monkeypatch.setattr(removal, "train", boom)
    again = removal.run_removal(s, ctx.spec, TINY.train, {"exact": order}, group, **kw)
    assert again == res
