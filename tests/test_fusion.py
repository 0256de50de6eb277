import numpy as np
import pytest
import torch
from sklearn.base import clone

from histofuse.errors import HistofuseError
from histofuse.heads.fusion import STRATEGIES, FusionModule, TorchHead, clip_loss
from histofuse.heads.names import FUSION_HEADS, TORCH_HEADS
from histofuse.heads.probes import make_head

BLOCKS = [12, 20, 8]


def _x(n=16, seed=0):
    return torch.randn(n, sum(BLOCKS), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes_and_gradients(strategy):
    torch.manual_seed(0)
    m = FusionModule(strategy, BLOCKS, n_out=5, embed_dim=16, num_heads=4, hidden=10)
    x = _x().requires_grad_(True)
    pred, aux = m(x)
    assert pred.shape == (16, 5) and aux.shape == ()
    (pred.pow(2).mean() + aux).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    trained = [p for p in m.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, strategy
    assert m.out.weight.grad.abs().sum() > 0


def test_self_attn_released_is_its_linear_bottleneck():
    torch.manual_seed(0)
    m = FusionModule("self-attn-released", BLOCKS, n_out=5, embed_dim=16, num_heads=4)
    x = _x(32)
    pred, _ = m(x)
    torch.testing.assert_close(pred, m.bottleneck(x), rtol=0, atol=1e-6)
    # The same map as one explicit matrix product: W_out · W_o · W_v (the bottleneck 40→16→16→5).
    a = m.attn
    w = m.out.weight @ a.out_proj.weight @ a.v_proj.weight
    b = m.out.weight @ (a.out_proj.weight @ a.v_proj.bias + a.out_proj.bias) + m.out.bias
    torch.testing.assert_close(pred, x @ w.T + b, rtol=1e-5, atol=1e-5)
    # Query and key projections are dead: zero gradient.
    pred.sum().backward()
    assert a.q_proj.weight.grad.abs().max() == 0 and a.k_proj.weight.grad.abs().max() == 0
    assert a.v_proj.weight.grad.abs().max() > 0


def test_cross_attn_released_depends_only_on_key_value_encoder():
    torch.manual_seed(0)
    m = FusionModule("cross-attn-released", BLOCKS, n_out=3, embed_dim=16, num_heads=4)
    assert m.kv == 1  # the widest block, as GigaPath in the release
    x = _x()
    y = x.clone()
    y[:, :12] = torch.randn(16, 12)  # change a query encoder only
    torch.testing.assert_close(m(x)[0], m(y)[0], rtol=0, atol=1e-6)
    y[:, 12:32] += 1.0  # change the key/value encoder
    assert not torch.allclose(m(x)[0], m(y)[0])


def test_contrastive_loss_and_gates():
    a = torch.randn(8, 4)
    assert clip_loss(a, a, 0.5) < clip_loss(a, torch.randn(8, 4), 0.5)
    m = FusionModule("contrastive", BLOCKS, n_out=2, embed_dim=8, num_heads=2, weight=0.0)
    assert m(_x())[1].item() == 0.0
    g = FusionModule("gated", BLOCKS, n_out=2, embed_dim=8, num_heads=2)
    assert torch.allclose(g.gates(), torch.full((3,), 1 / 3))


def test_fusion_heads_refuse_a_single_encoder():
    with pytest.raises(HistofuseError, match="at least two"):
        FusionModule("token-attn", [40], n_out=2)
    with pytest.raises(HistofuseError, match="do not add up"):
        TorchHead("concat", blocks=[3, 3]).fit(np.zeros((4, 5)), np.zeros(4))


def test_names_agree():
    assert set(TORCH_HEADS) == set(STRATEGIES) and set(TORCH_HEADS) > FUSION_HEADS


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, sum(BLOCKS))).astype(np.float32)
    y = x[:, :6] @ rng.normal(size=(6, 4)) + 0.1 * rng.normal(size=(n, 4))
    return x, y


@pytest.mark.parametrize("strategy", ["mlp", "self-attn-released", "token-attn", "gated"])
def test_training_is_seeded_deterministic_and_learns(strategy):
    x, y = _data()
    params = dict(
        embed_dim=16, num_heads=4, hidden=16, epochs=40, batch_size=64, lr=3e-3, random_state=3
    )
    est = make_head(strategy, params, seed=3).set_params(blocks=BLOCKS)
    a = est.fit(x[:300], y[:300]).predict(x[300:])
    b = clone(est).fit(x[:300], y[:300]).predict(x[300:])
    np.testing.assert_array_equal(a, b)
    r = [np.corrcoef(a[:, j], y[300:, j])[0, 1] for j in range(4)]
    assert min(r) > 0.6, r
    assert est.loss_curve_[-1] < est.loss_curve_[0]


def test_released_training_defaults():
    est = make_head("contrastive")
    p = est.get_params()
    assert (p["embed_dim"], p["batch_size"], p["lr"], p["min_lr"], p["epochs"]) == (
        1024,
        512,
        1e-4,
        1e-6,
        50,
    )
    assert (p["temperature"], p["weight"], p["num_heads"], p["standardize"]) == (0.5, 0.1, 8, False)
