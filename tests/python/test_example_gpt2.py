"""The worked example (examples/gpt2_token_attribution.py) runs on a tiny configuration,
and what it prints per generated token is the Attributor's per-token top-k."""
import os
import runpy
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (scripts/test.sh installs it)")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "gpt2_token_attribution.py")


def test_gpt2_example_tiny(tmp_path, capsys):
    main = runpy.run_path(EXAMPLE)["main"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = main(["--examples", "12", "--steps", "2", "--generate", "3", "--k", "16", "--width", "16",
                    "--layers", "1", "--length", "20", "--top", "2", "--run", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "coverage" in out and "(100.0%)" in out
    assert res["index"].shape == (3, 2) and int(res["index"].max()) < 12
    # Each printed row is the per-token top-k of the run: rerun the scores independently.
    from grass.score import TokenLogProbs
    attr = res["attributor"]
    gen = res["generated"]
    prompt = torch.tensor([list("The license ".encode())])
    full = torch.cat([prompt[0], gen])[None]
    scores = attr.scores([full], target=TokenLogProbs(prompt.shape[1]))
    assert torch.equal(scores.topk(2, dim=1).indices, res["index"])
    for i in res["index"][0]:
        text = bytes(int(c) for c in res["train"][i]).decode("utf-8", errors="replace")
        assert repr(text) in out
