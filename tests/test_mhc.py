"""mHC residual: Sinkhorn-Knopp projection, precision, the plain-residual start, and training."""

import pytest
import torch
from conftest import compose_config

from genrec.models.layers import PlainResidual
from genrec.models.mhc import MHCResidual, sinkhorn_knopp
from genrec.models.sasrec import SASRec
from genrec.run.training import train


def _assert_doubly_stochastic(m: torch.Tensor, tol: float) -> None:
    m = m.float()
    assert torch.isfinite(m).all()
    assert (m >= 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)), atol=tol, rtol=0)
    torch.testing.assert_close(m.sum(-2), torch.ones_like(m.sum(-2)), atol=tol, rtol=0)


def _extreme_logits(n: int) -> torch.Tensor:
    """[*, n, n] logits that 20 plain Sinkhorn rounds do not converge on."""
    g = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, (256, n, n), generator=g).float() * 2 - 1
    near_perm = torch.full((1, n, n), -60.0)
    near_perm[0, 0, :] = 60.0  # one row dominates every column: far from any permutation
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 3e38])
    wild = special[torch.randint(0, 4, (8, n, n), generator=g)]
    return torch.cat([signs * 1e4, signs * 30, torch.randn(256, n, n, generator=g) * 1e3,
                      near_perm, wild])


@pytest.mark.parametrize("n", [2, 4, 8])
def test_sinkhorn_rows_and_columns_sum_to_one(n):
    torch.manual_seed(0)
    _assert_doubly_stochastic(sinkhorn_knopp(torch.randn(512, n, n)), 1e-3)
    _assert_doubly_stochastic(sinkhorn_knopp(torch.randn(512, n, n) * 5), 1e-3)
    _assert_doubly_stochastic(sinkhorn_knopp(_extreme_logits(n)), 1e-3)


def test_sinkhorn_is_plain_sinkhorn_when_it_converges():
    """The exact balancing step only closes what finite rounds leave: on ordinary logits the
    result is the textbook log-space iteration run to convergence."""
    torch.manual_seed(0)
    logits = torch.randn(512, 4, 4)
    z = logits.double()
    for _ in range(500):
        z = z - z.logsumexp(-2, keepdim=True)
        z = z - z.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(sinkhorn_knopp(logits), z.exp().float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_half_precision_has_no_nan(dtype):
    torch.manual_seed(0)
    for logits in (torch.randn(256, 4, 4), _extreme_logits(4)):
        out = sinkhorn_knopp(logits.to(dtype))
        assert out.dtype == dtype
        _assert_doubly_stochastic(out, 1e-2)  # entries rounded to 8 (bf16) / 11 (fp16) bits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mhc_block_half_precision_forward_and_backward_are_finite(dtype):
    torch.manual_seed(0)
    res = MHCResidual(16, expansion=4).to(dtype)
    # |x| ~ 300: the sum of squares of the RMS norm would overflow fp16
    stream = res.expand(torch.randn(2, 5, 16) * 300).to(dtype).requires_grad_()
    lin = torch.nn.Linear(16, 16).to(dtype)
    out = res(stream, lin)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in res.parameters())


def test_fresh_block_is_the_plain_residual():
    """gate_init = 0: exactly x + f(x) per copy; the default gates (0.01) stay within 2e-2."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16)
    f = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    plain = PlainResidual()(x, f)
    for gate, tol in ((0.0, 1e-5), (0.01, 2e-2)):
        res = MHCResidual(16, gate_init=gate)
        head = MHCResidual(16, gate_init=gate, stream_only=True)
        stream = res(head.expand(x), f)
        assert stream.shape == (3, 7, 4, 16)
        torch.testing.assert_close(head.collapse(stream), plain, atol=tol, rtol=tol)
        if gate == 0.0:
            torch.testing.assert_close(stream, plain.unsqueeze(-2).expand_as(stream), atol=1e-5, rtol=1e-5)


def test_fresh_sasrec_mhc_matches_plain_sasrec():
    """The whole network: SASRec+mHC with the plain model's weights and zero gates is SASRec;
    at the default gates (0.01) the hidden states differ by less than 5e-2 (LayerNorm scale 1)."""
    plain = SASRec(n_items=40, maxlen=12, hidden_units=16, dropout=0.0).eval()
    for gate, tol in ((0.0, 1e-5), (None, 5e-2)):
        torch.manual_seed(0)
        mhc = SASRec(n_items=40, maxlen=12, hidden_units=16, dropout=0.0, residual="mhc").eval()
        missing, unexpected = mhc.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected and all("residual" in k for k in missing)
        if gate is not None:
            with torch.no_grad():
                for module in mhc.modules():
                    for name in ("gates", "gate_out"):
                        if hasattr(module, name):
                            getattr(module, name).fill_(gate)
        items = torch.randint(0, 41, (4, 12))
        items[:, -1] = 3
        torch.testing.assert_close(mhc.encode(items), plain.encode(items), atol=tol, rtol=tol)


def test_stream_instance_holds_only_the_readout():
    net = SASRec(n_items=40, maxlen=12, hidden_units=16, residual="mhc")
    assert {n for n, _ in net.residual_stream.named_parameters()} == {"phi_out", "gate_out", "bias_out"}
    with pytest.raises(TypeError, match="stream_only"):
        net.residual_stream(torch.zeros(1, 2, 4, 16), lambda x: x)


def test_sasrec_mhc_is_causal_and_reaches_every_parameter():
    torch.manual_seed(0)
    net = SASRec(n_items=50, maxlen=12, hidden_units=16, num_heads=2, dropout=0.0, residual="mhc").eval()
    items = torch.randint(1, 51, (2, 10))
    changed = items.clone()
    changed[:, 6:] = torch.randint(1, 51, (2, 4))
    torch.testing.assert_close(net.encode(items)[:, :6], net.encode(changed)[:, :6])
    net.train()
    items = torch.randint(0, 51, (4, 12))
    items[:, -1] = 1
    net.encode(items).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_sasrec_mhc_learns_on_synthetic_data(tmp_path):
    metrics = train(compose_config(tmp_path, [
        "model.residual=mhc", "trainer.max_epochs=3", "task.optimizer.lr=0.005",
        "data.source.n_users=500"]))
    assert metrics["test/ndcg@10"] > 2 * metrics["popularity/test/ndcg@10"]
    assert metrics["test/sampled/ndcg@10"] > 2 * metrics["popularity/test/sampled/ndcg@10"]
