"""Masked BCE / focal loss (issue 6): gradients computed by hand, class weighting, DDP.

Unknown entries must contribute nothing to the loss or to its normalisation: the loss is
the sum over known entries divided by the number of known entries (not by N*K).
The loss computes in float32 (it casts AMP half logits up), hence the 1e-5 tolerances.
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from trainer.losses import entry_weights, masked_bce, positive_weights, sample_weights

# 2 windows x 3 classes; two entries unknown.
LOGITS = [[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]
TARGETS = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
KNOWN = [[True, False, True], [True, True, False]]


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _tensors():
    z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    return z, torch.tensor(TARGETS, dtype=torch.float64), torch.tensor(KNOWN)


def test_masked_bce_value_and_gradient_by_hand():
    z, y, k = _tensors()
    loss = masked_bce(z, y, k)
    loss.backward()
    n_known = 4
    # BCE with logits: l = -[y log s + (1-y) log(1-s)], dl/dz = s - y.
    expected_loss = 0.0
    expected_grad = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            if not KNOWN[i][j]:
                continue
            s, t = _sig(LOGITS[i][j]), TARGETS[i][j]
            expected_loss += -(t * math.log(s) + (1 - t) * math.log(1 - s))
            expected_grad[i, j] = (s - t) / n_known
    assert loss.item() == pytest.approx(expected_loss / n_known, rel=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-8)
    # Concretely: unknown entries get exactly zero gradient, known ones (s - y) / 4, not / 6.
    assert z.grad[0, 1] == 0 and z.grad[1, 2] == 0
    assert z.grad[0, 0].item() == pytest.approx((_sig(2.0) - 1) / 4, rel=1e-6)
    # The mask really changes the gradient: without it every entry moves and the scale is 1/6.
    z2, y2, _ = _tensors()
    masked_bce(z2, y2, torch.ones(2, 3, dtype=torch.bool)).backward()
    assert z2.grad[0, 1].item() == pytest.approx(_sig(-1.0) / 6, rel=1e-6)
    assert not np.allclose(z2.grad.numpy(), z.grad.numpy())


def test_unknown_targets_do_not_matter():
    """Whatever an unknown entry's target or logit is, loss and gradients are unchanged."""
    z, y, k = _tensors()
    masked_bce(z, y, k).backward()
    z2, y2, _ = _tensors()
    with torch.no_grad():
        z2[0, 1] = 40.0  # an absurd logit on an unknown entry
    y2[0, 1], y2[1, 2] = 1.0, 0.0
    loss2 = masked_bce(z2, y2, k)
    loss2.backward()
    assert loss2.item() == pytest.approx(masked_bce(*_tensors()).item(), rel=1e-6)
    grad = z.grad.clone()
    grad[0, 1] = 0.0
    np.testing.assert_allclose(z2.grad.numpy(), grad.numpy(), rtol=1e-5, atol=1e-8)


def test_pos_weight_gradient_by_hand():
    z, y, k = _tensors()
    w = [3.0, 2.0, 5.0]
    masked_bce(z, y, k, pos_weight=torch.tensor(w, dtype=torch.float64)).backward()
    # l = -[w y log s + (1-y) log(1-s)]  ->  dl/dz = s (w y + 1 - y) - w y.
    expected = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            if KNOWN[i][j]:
                s, t = _sig(LOGITS[i][j]), TARGETS[i][j]
                expected[i, j] = (s * (w[j] * t + 1 - t) - w[j] * t) / 4
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-5, atol=1e-8)


def test_focal_gradient_by_hand():
    z, y, k = _tensors()
    g = 2.0
    masked_bce(z, y, k, focal_gamma=g).backward()
    # y=1: L = -(1-p)^g log p        -> dL/dz = (1-p)^g [g p log p - (1-p)]
    # y=0: L = -p^g log(1-p)         -> dL/dz = p^g [p - g (1-p) log(1-p)]
    expected = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            if KNOWN[i][j]:
                p, t = _sig(LOGITS[i][j]), TARGETS[i][j]
                if t == 1:
                    d = (1 - p) ** g * (g * p * math.log(p) - (1 - p))
                else:
                    d = p**g * (p - g * (1 - p) * math.log(1 - p))
                expected[i, j] = d / 4
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-5, atol=1e-8)


def test_all_unknown_batch_is_zero_not_nan():
    z, y, _ = _tensors()
    loss = masked_bce(z, y, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(z.grad) == 0


def test_class_weighting_and_sampling_count_known_entries_only():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    known = np.array([[1, 0], [1, 0], [1, 1], [0, 1]], dtype=bool)
    # class 0: 1 positive, 2 known negatives -> 2; class 1: 1 positive, 1 known negative -> 1.
    np.testing.assert_allclose(positive_weights(targets, known), [2.0, 1.0])
    # An unknown "positive" target must not count as a positive.
    t2 = targets.copy()
    t2[1, 1] = 1
    np.testing.assert_allclose(positive_weights(t2, known), [2.0, 1.0])
    np.testing.assert_allclose(sample_weights(t2, known), sample_weights(targets, known))


def test_unknown_weight_counts_unknown_entries_as_weighted_negatives_by_hand():
    """Weak assume-negative: unknown entries are negatives of weight w (whatever their stored
    target), and the mean is over known + w * unknown entries."""
    w = 0.25
    z, y, k = _tensors()
    loss = masked_bce(z, y, k, unknown_weight=w)
    loss.backward()
    norm = 4 + w * 2
    expected_loss = 0.0
    expected_grad = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            s = _sig(LOGITS[i][j])
            t, weight = (TARGETS[i][j], 1.0) if KNOWN[i][j] else (0.0, w)  # [1][2] stores 1: ignored
            expected_loss += weight * -(t * math.log(s) + (1 - t) * math.log(1 - s))
            expected_grad[i, j] = weight * (s - t) / norm
    assert loss.item() == pytest.approx(expected_loss / norm, rel=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), expected_grad, rtol=1e-5, atol=1e-8)
    assert z.grad[1, 2].item() == pytest.approx(w * _sig(-2.0) / norm, rel=1e-6)  # pushed down, not up
    # w = 0 is exactly the masked loss; w = 1 is "assume negative" over all 6 entries.
    z0, y0, k0 = _tensors()
    masked_bce(z0, y0, k0, unknown_weight=0.0).backward()
    z1, y1, k1 = _tensors()
    masked_bce(z1, y1, k1).backward()
    np.testing.assert_array_equal(z0.grad.numpy(), z1.grad.numpy())
    z2, y2, k2 = _tensors()
    all_neg = torch.where(k2, y2, torch.zeros_like(y2))
    torch.testing.assert_close(masked_bce(z2, y2, k2, unknown_weight=1.0),
                               masked_bce(z2, all_neg, torch.ones_like(k2)).to(torch.float32))
    with pytest.raises(ValueError, match=r"unknown_weight 1.5 must be in \[0, 1\]"):
        masked_bce(z2, y2, k2, unknown_weight=1.5)

# --- DDP: the training loop's normaliser (global known count / world size) -----------------

def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from trainer import distributed as D

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        info = D.DistInfo(rank=rank, world_size=world)
        x, y, k, w = _ddp_data()
        grads = {}
        for gamma, uw in CASES:
            torch.manual_seed(0)
            model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 3).double())
            part = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal shards, unequal known counts
            # as in trainer.train: the global (weighted) entry count over the world size
            norm = D.all_sum(info, entry_weights(k[part], uw).sum().to(torch.float64)) / world
            loss = masked_bce(model(x[part]), y[part], k[part], w, gamma, normalizer=norm, unknown_weight=uw)
            loss.backward()
            grads[gamma, uw] = {n: p.grad for n, p in model.module.named_parameters()}
            del model, loss
        if rank == 0:
            torch.save(grads, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def _ddp_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(6, 3, generator=g) > 0.5).double()
    k = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    w = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64)
    return x, y, k, w


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = ((0.0, 0.0), (2.0, 0.0), (0.0, 0.25))  # (focal gamma, unknown weight), all with class weights


def test_ddp_gradient_equals_single_process_masked_mean(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    all_grads = torch.load(out)
    x, y, k, w = _ddp_data()
    for gamma, uw in CASES:
        ddp = all_grads[gamma, uw]
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).double()
        masked_bce(model(x), y, k, w, gamma, unknown_weight=uw).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7)
        # Precondition: per-rank normalisation would give a different gradient here.
        model.zero_grad()
        (sum(masked_bce(model(x[s]), y[s], k[s], w, gamma, unknown_weight=uw) for s in (slice(0, 2), slice(2, 6))) / 2).backward()
        assert not torch.allclose(model.weight.grad, ddp["weight"], rtol=1e-3)
