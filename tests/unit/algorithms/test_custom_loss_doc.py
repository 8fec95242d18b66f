"""Runs the worked example of docs/custom_loss.md exactly as written.

The ```python block becomes my_pkg/my_losses.py in a temp dir, the ```yaml block is parsed,
and the loss is built through the registry resolver with the YAML's class path and params.
"""

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlkit.algorithms import LossInputs, PolicyLoss, build_loss

DOC = Path(__file__).resolve().parents[3] / "docs" / "custom_loss.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture
def doc_loss(tmp_path, monkeypatch):
    (python,) = _blocks("python")  # exactly one importable example
    (cfg_text,) = _blocks("yaml")
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "my_losses.py").write_text(python)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = yaml.safe_load(cfg_text)["loss"]
    yield cfg
    for name in [n for n in sys.modules if n == "my_pkg" or n.startswith("my_pkg.")]:
        del sys.modules[name]


def test_doc_example_builds_from_yaml_and_matches_hand_value(doc_loss):
    assert doc_loss["class"] == "my_pkg.my_losses:ClipWithPositiveNLL"
    loss_fn = build_loss(doc_loss["class"], **doc_loss["params"])
    assert isinstance(loss_fn, PolicyLoss) and loss_fn.nll_coef == 0.5
    lp = torch.tensor([[-1.0, -2.0], [-0.5, 123.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    out = loss_fn(LossInputs(logprobs=lp, mask=mask, advantages=torch.tensor([1.0, -1.0])))
    # on-policy: ppo part = -A = row0 [-1, -1], row1 [1]; NLL on row 0 only: 0.5*[1, 2]
    # per token [-0.5, 0], [1] -> token_mean (-0.5 + 0 + 1) / 3 = 1/6 (the doc's numbers)
    torch.testing.assert_close(out.loss, torch.tensor(1 / 6, dtype=torch.float64))
    torch.testing.assert_close(
        out.metrics["policy/pos_nll"], torch.tensor(1.5, dtype=torch.float64)
    )
    out.loss.backward()
    # d/dlp: row 0 (-A - 0.5)/3 = -0.5 each; row 1 token 0: +1/3; padding 0
    expected = torch.tensor([[-0.5, -0.5], [1 / 3, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected)


def test_doc_example_rejects_misspelt_param(doc_loss):
    with pytest.raises(TypeError, match="nll_coeff.*Accepted: agg_mode, clip_high, clip_low"):
        build_loss(doc_loss["class"], nll_coeff=0.5)


def test_doc_example_gradcheck(doc_loss):
    loss_fn = build_loss(doc_loss["class"], **doc_loss["params"])
    gen = torch.Generator().manual_seed(0)
    lp = (torch.rand(3, 4, generator=gen, dtype=torch.float64) * -2 - 0.1).requires_grad_()
    old = lp.detach() - (torch.rand(3, 4, generator=gen, dtype=torch.float64) - 0.5) * 0.2
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2:] = False
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def f(x):
        return loss_fn(LossInputs(x, mask, adv, old_logprobs=old)).loss

    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-5)
