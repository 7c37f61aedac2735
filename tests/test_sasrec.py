import pytest
import torch
import torch.nn.functional as F

from genrec.models.layers import BLOCK_FORMS, FastDropout, random_bytes
from genrec.models.sasrec import SASRec
from genrec.tasks.losses import linear_cross_entropy, resolve_matmul_dtype


def _net(**kw):
    torch.manual_seed(0)
    return SASRec(**{"n_items": 50, "maxlen": 12, "hidden_units": 16, "num_blocks": 2, "num_heads": 2,
                     "dropout": 0.0, **kw}).eval()


def test_shapes():
    net = _net()
    items = torch.randint(1, 51, (3, 7))
    hidden = net.encode(items)
    assert hidden.shape == (3, 7, 16)
    assert net.score(hidden[:, -1]).shape == (3, 51)
    assert net.score(hidden[:, -1], torch.randint(1, 51, (3, 5))).shape == (3, 5)


@pytest.mark.parametrize("block", BLOCK_FORMS)
def test_causal_output_at_t_ignores_later_items(block):
    net = _net(block=block)
    items = torch.randint(1, 51, (2, 10))
    changed = items.clone()
    changed[:, 6:] = torch.randint(1, 51, (2, 4))
    torch.testing.assert_close(net.encode(items)[:, :6], net.encode(changed)[:, :6])
    assert not torch.allclose(net.encode(items)[:, 6:], net.encode(changed)[:, 6:])


@pytest.mark.parametrize("block", BLOCK_FORMS)
def test_left_padding_does_not_change_the_result(block):
    net = _net(block=block)
    items = torch.randint(1, 51, (1, 5))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), items], 1)
    torch.testing.assert_close(net.encode(padded)[:, -5:], net.encode(items), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(net.encode(padded)).all()


def test_scores_use_the_shared_item_embeddings():
    net = _net()
    h = torch.randn(4, 16)
    torch.testing.assert_close(net.score(h), h @ net.item_emb.weight.T)


@pytest.mark.parametrize("block", BLOCK_FORMS)
def test_gradients_reach_every_parameter(block):
    net = _net(dropout=0.1, block=block).train()
    items = torch.randint(0, 51, (4, 12))
    items[:, -1] = 1
    net.encode(items).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_init_std_draws_every_weight_from_that_normal():
    net = SASRec(n_items=500, maxlen=200, hidden_units=64, init_std=0.02)
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        elif p.dim() == 2:
            rows = p[1:] if name in ("item_emb.weight", "pos_emb.weight") else p  # row 0 = padding
            assert abs(rows.std().item() - 0.02) < 0.002, name
    assert not net.item_emb.weight[0].any() and not net.pos_emb.weight[0].any()
    xavier = SASRec(n_items=500, maxlen=200, hidden_units=64)  # init_std None: xavier-normal
    assert abs(xavier.blocks[0].ffn.net[0].weight.std().item() - (2 / 128) ** 0.5) < 0.01


def test_reference_block_is_the_authors_formula():
    """h = LN1(x); a = h + Attn(q=h, k=v=x); g = LN2(a); out = g + FFN(g), by hand."""
    block = _net(block="reference").blocks[0]
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    att = block.attn
    h = block.attn_norm(x)
    d, heads = 16, att.n_heads
    q = (h @ att.qkv.weight[:d].T + att.qkv.bias[:d]).view(2, 6, heads, -1).transpose(1, 2)
    k = (x @ att.qkv.weight[d : 2 * d].T + att.qkv.bias[d : 2 * d]).view(2, 6, heads, -1).transpose(1, 2)
    v = (x @ att.qkv.weight[2 * d :].T + att.qkv.bias[2 * d :]).view(2, 6, heads, -1).transpose(1, 2)
    weights = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    a = h + att.out((weights @ v).transpose(1, 2).reshape(2, 6, d))
    g = block.ffn_norm(a)
    expected = g + block.ffn(g)
    out, _ = block(x, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    pre_ln, _ = _net().blocks[0](x, mask)
    assert not torch.allclose(out, pre_ln, atol=1e-3)


def test_reference_block_with_mhc_or_an_unknown_form_is_a_clear_error():
    with pytest.raises(ValueError, match="model.residual=plain"):
        _net(block="reference", residual="mhc")
    with pytest.raises(ValueError, match="model.block must be one of"):
        _net(block="post_ln")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_cross_entropy_equals_the_plain_loss(dtype, tol):
    torch.manual_seed(0)
    h = torch.randn(300, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    y = torch.randint(1, 40, (300,))
    logits = h @ w.T
    logits[:, 0] = float("-inf")
    ref = F.cross_entropy(logits, y)
    ref_grads = torch.autograd.grad(ref, [h, w])
    out = linear_cross_entropy(h, w, y, chunk_size=64, matmul_dtype=dtype)
    grads = torch.autograd.grad(out * 2.0, [h, w])  # a non-unit upstream gradient
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, 2.0 * r, atol=tol, rtol=tol)


def test_fast_dropout_rate_and_scale():
    torch.manual_seed(0)
    drop = FastDropout(0.25).train()
    out = drop(torch.ones(200_000))
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(drop.eval()(torch.ones(5)), torch.ones(5))


def test_random_bytes_are_uniform_over_all_256_values():
    torch.manual_seed(0)
    counts = torch.bincount(random_bytes(torch.Size([256, 1001]), torch.device("cpu")).flatten().long(),
                            minlength=256)
    assert counts.shape == (256,)
    # 1001 expected per value; 5 standard deviations is about +-160
    assert counts.min() > 840 and counts.max() < 1160


def test_ce_matmul_dtype_auto_is_float32_where_bf16_is_emulated(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_matmul_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_matmul_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_matmul_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="task.ce_matmul_dtype"):
        resolve_matmul_dtype("float33", torch.device("cpu"))


def test_cosine_decay_follows_the_run_length():
    from genrec.tasks.schedules import cosine_decay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_decay(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])  # warm-up, then the peak
    assert lrs[6] == pytest.approx(0.5)  # half-way through the cosine
    assert lrs[10:] == pytest.approx([0.0, 0.0])  # held at the floor past total_steps
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_decay(opt, total_steps=5, warmup_steps=5)
