"""The frozen tied head (newllm.head): fused cross-entropy, merged and padded rows,
bf16 matmuls, and tie-aware top-1 accuracy, checked against autograd and by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from newllm.head import TiedCrossEntropy, TiedHead, tied_head, tied_token_nll, top1_credit
from newllm.model import tied_logits


def _tie_credit(logits, y):
    """Reference top-1 credit from full ``[B, V]`` logits: 1/m where the target is among the m ids at the maximum."""
    top = logits.max(dim=1, keepdim=True).values
    at_max = logits == top
    return at_max.gather(1, y[:, None]).squeeze(1).float() / at_max.sum(dim=1).float()


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_tied_cross_entropy_matches_autograd(chunk):
    torch.manual_seed(0)
    E = torch.randn(50, 6)
    y = torch.randint(0, 50, (10,))
    h1 = torch.randn(10, 6, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    fused = TiedCrossEntropy.apply(h1, E, y, chunk)
    reference = F.cross_entropy(tied_logits(h2, E), y)
    (2.5 * fused).backward()
    (2.5 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)


def _head_with_shared_rows(V=60, d=6, shared=25, seed=0):
    """[V, d] embeddings whose last ``shared`` ids share one row (as the bigram stand-in's unknown ids)."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(V, d, generator=g)
    E[V - shared :] = torch.randn(d, generator=g)
    return E


def test_a_head_with_identical_rows_is_merged_exactly():
    E = _head_with_shared_rows()
    head = tied_head(E)
    assert head.rows.shape == (36, 6) and torch.equal(head.rows[head.class_of], E)
    assert sorted(head.log_mult.exp().round().tolist()) == [1.0] * 35 + [25.0]
    distinct = tied_head(torch.randn(60, 6))  # nothing to merge: the matrix itself
    assert distinct.log_mult is None and distinct.class_of is None and distinct.rows.shape == (60, 6)

    torch.manual_seed(1)
    y = torch.cat([torch.randint(0, 60, (30,)), torch.tensor([40, 59, 35, 0])])  # shared and own-row targets
    h1 = (3 * torch.randn(34, 6)).requires_grad_(True)
    h2 = h1.detach().clone().requires_grad_(True)
    for chunk in (1, 7, 64):
        merged = TiedCrossEntropy.apply(h1, head, y, chunk)
        full = F.cross_entropy(tied_logits(h2, E), y)
        merged.backward()
        full.backward()
        assert merged.item() == pytest.approx(full.item(), rel=1e-6)
        assert torch.allclose(h1.grad, h2.grad, atol=1e-6)
        h1.grad = h2.grad = None
        nll, credit = tied_token_nll(h1.detach(), head, y, chunk)
        full_logits = tied_logits(h1.detach(), E)
        reference = F.cross_entropy(full_logits, y, reduction="none")
        assert torch.allclose(nll, reference, rtol=1e-5, atol=1e-5)
        # a hit scores 1/m, m = the ids at the row maximum (ids sharing a row tie by construction)
        assert torch.equal(credit, _tie_credit(full_logits, y))


def test_per_token_nll_and_accuracy():
    E = torch.eye(3)
    h = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    nll, credit = tied_token_nll(h, E, torch.tensor([0, 2]), chunk_tokens=1)
    expected = -torch.log_softmax(h, 1)[[0, 1], [0, 2]]
    assert torch.allclose(nll, expected) and credit.tolist() == [1.0, 0.0] and credit.dtype == torch.float32


def test_bf16_head_target_logit_is_exact_and_the_rest_rounded_by_hand():
    # h·E_0 = 1 + 2^-9 rounds to 1.0 in bf16 (spacing 2^-7 near 1); h·E_1 = 1 exactly.
    # The target logit is recomputed exactly: NLL = log(e^(1+2^-9) + e^1) - (1+2^-9)
    E = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    head = tied_head(E, "bf16")
    assert head.rows.dtype == torch.bfloat16 and torch.equal(head.rows.float(), E) and head.log_mult is None
    assert tied_head(E).rows.dtype == torch.float32
    h, eps = torch.tensor([[1.0, 2.0**-9]]), 2.0**-9
    nll, credit = tied_token_nll(h, head, torch.tensor([0]), chunk_tokens=4)
    assert nll.item() == pytest.approx(math.log1p(math.exp(-eps)), rel=1e-6) and credit.tolist() == [1.0]
    # the fused loss: the same value; ∂L/∂h = (Σ_c e_c E_c) / Z - E_y with e = (1, e^-eps) rounded to bf16 (1, 1)
    hidden = h.clone().requires_grad_(True)
    loss = TiedCrossEntropy.apply(hidden, head, torch.tensor([0]), 4)
    loss.backward()
    z = 1 + math.exp(-eps)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-eps)), rel=1e-6)
    assert torch.allclose(hidden.grad, torch.tensor([[2 / z - 1, 1 / z - 1]]), atol=1e-7)
    # a bf16 hidden state gets a bf16 gradient
    bf = h.bfloat16().requires_grad_(True)
    TiedCrossEntropy.apply(bf, head, torch.tensor([0]), 4).backward()
    assert bf.grad.dtype == torch.bfloat16


def test_a_merged_bf16_head_keeps_the_multiplicities():
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # ids 1..3 share a row
    head = tied_head(E, "bf16")
    assert head.rows.dtype == torch.bfloat16 and torch.equal(head.rows.float()[head.class_of], E)
    assert torch.allclose(head.log_mult.exp(), torch.tensor([1.0, 3.0])[head.classes(torch.tensor([0, 1]))])
    # h = (2, 0): logits (2, 0, 0, 0): NLL of id 0 = log(e^2 + 3) - 2, of id 2 = log(e^2 + 3)
    nll, credit = tied_token_nll(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), head, torch.tensor([0, 2]), 1)
    assert torch.allclose(nll, torch.tensor([math.log(math.e**2 + 3) - 2, math.log(math.e**2 + 3)]), atol=1e-6)
    assert credit.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shared", [0, 25])
def test_a_padded_head_gives_the_loss_gradient_and_hits_of_the_unpadded_one(precision, shared):
    # 60 ids (36 distinct rows with 25 shared) padded to 64 rows: the padding rows' logits
    # are -inf in every chunk, so they never enter the softmax, the gradient or the top-1
    # comparison -- even where every real logit is negative and a padding row's raw logit
    # (0) would be the largest
    E = _head_with_shared_rows(shared=shared) if shared else torch.randn(60, 6, generator=torch.Generator().manual_seed(3))
    plain, padded = tied_head(E, precision), tied_head(E, precision, pad_multiple=64)
    assert plain.pad == 0 and padded.pad == 64 - plain.rows.shape[0] and padded.rows.shape[0] == 64
    assert torch.equal(padded.rows[: plain.rows.shape[0]], plain.rows) and not padded.rows[-padded.pad :].any()
    assert tied_head(E, precision, pad_multiple=plain.rows.shape[0]).pad == 0
    gen = torch.Generator().manual_seed(4)
    y = torch.randint(0, 60, (20,), generator=gen)
    h = 3 * torch.randn(20, 6, generator=gen)
    h[:5] = -10 * E[y[:5]] / E[y[:5]].norm(dim=1, keepdim=True)  # strongly negative logits for some rows
    for chunk in (1, 7, 64):
        results = []
        for head in (plain, padded):
            hidden = h.clone().requires_grad_(True)
            loss = TiedCrossEntropy.apply(hidden, head, y, chunk)
            loss.backward()
            results.append((loss.detach(), hidden.grad, *tied_token_nll(h, head, y, chunk)))
        (l1, g1, n1, c1), (l2, g2, n2, c2) = results
        assert torch.allclose(l1, l2, rtol=1e-6) and torch.allclose(g1, g2, atol=1e-6)
        assert torch.allclose(n1, n2, rtol=1e-6, atol=1e-6) and torch.equal(c1, c2)
    assert torch.isfinite(padded.shifted_rows_t[:, : plain.rows.shape[0]]).all()
    assert padded.shifted_rows_t[6, -padded.pad :].eq(float("-inf")).all()  # ln m row of the padding


def test_the_head_is_padded_to_a_multiple_of_64_on_cuda_only():
    from newllm.head import head_pad_multiple

    assert head_pad_multiple(torch.device("cuda")) == 64 and head_pad_multiple(torch.device("cpu")) == 1
    assert tied_head(torch.randn(70, 4)).pad == 0  # CPU: results stay those of an unpadded head, bit for bit
    assert tied_head(torch.randn(70, 4), pad_multiple=64).rows.shape == (128, 4)


def test_an_exact_tie_for_the_maximum_scores_one_over_the_tied_ids():
    # ids 0 and 1 have the same row, logit 3 each; id 2 has logit 1: a target 0 or 1 is a
    # coin flip between the two (credit 1/2), merged into one row or not
    E = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for head in (TiedHead(E), tied_head(E)):
        nll, credit = tied_token_nll(torch.tensor([[3.0, 1.0], [3.0, 1.0]]), head, torch.tensor([1, 2]), chunk_tokens=2)
        assert credit.tolist() == [0.5, 0.0]
        assert nll[0].item() == pytest.approx(math.log(2 * math.e**3 + math.e) - 3, rel=1e-6)


def test_a_shared_row_that_wins_scores_one_over_its_multiplicity_and_a_unique_row_one():
    # V = 7: ids 2..6 share the "unknown" row (0, 1) (m = 5); ids 0 and 1 have rows of their own
    E = torch.tensor([[1.0, 0.0], [0.5, 0.5]] + [[0.0, 1.0]] * 5)
    head = tied_head(E)
    assert head.rows.shape == (3, 2) and sorted(head.multiplicity.tolist()) == [1.0, 1.0, 5.0]
    h = torch.tensor([[0.0, 2.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    # rows 0, 1: the shared row wins (logit 2 against 0 and 1): a target among ids 2..6 scores 1/5,
    # id 0 nothing; rows 2, 3: id 0 wins alone (2 against 1 and 0): a full hit for id 0, none for id 4
    y = torch.tensor([4, 0, 0, 4])
    for chunk in (1, 3, 8):
        _, credit = tied_token_nll(h, head, y, chunk)
        assert credit.tolist() == pytest.approx([1 / 5, 0.0, 1.0, 0.0], abs=1e-7)
        _, plain = tied_token_nll(h, E, y, chunk)  # the unmerged matrix: five equal logits
        assert torch.equal(plain, credit)
    assert torch.equal(credit, _tie_credit(tied_logits(h, E), y))
    # the padded head: its zero rows (logit -inf) never count as tied ids, even where every real logit is negative
    padded = tied_head(E, pad_multiple=8)
    assert padded.pad == 5 and padded.multiplicity.tolist()[-5:] == [0.0] * 5
    # h = (-1, -2): logits -1 (id 0), -1.5 (id 1), -2 (ids 2..6), and 0 for a padding row were it not -inf
    assert tied_token_nll(torch.tensor([[-1.0, -2.0]]), padded, torch.tensor([0]), 4)[1].tolist() == [1.0]


def test_top1_credit_counts_the_multiplicities_of_every_row_at_the_maximum():
    logits = torch.tensor([[2.0, 2.0, 1.0], [2.0, 2.0, 1.0], [0.0, 3.0, 3.0], [1.0, 0.0, 0.0]])
    target, top = logits[torch.arange(4), torch.tensor([0, 2, 1, 0])], logits.amax(dim=1)
    credit = top1_credit(logits.clone(), target, top, torch.tensor([2.0, 3.0, 1.0]))
    # row 0: rows 0 and 1 tie, 2 + 3 ids; row 1: the target (row 2) is below the maximum;
    # row 2: rows 1 and 2 tie, 3 + 1 ids; row 3: row 0 alone at the maximum, its 2 ids
    assert credit.tolist() == pytest.approx([1 / 5, 0.0, 1 / 4, 1 / 2])


def test_a_bf16_hidden_state_gets_the_float32_loss_and_the_rounded_float32_gradient():
    # the head's matmuls cast the hidden state to bf16 anyway, so a bf16 hidden state and
    # its float32 copy give the same float32 loss; the bf16 gradient is the float32 one rounded once
    E = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    head = tied_head(E, "bf16")
    y = torch.tensor([1, 5, 7, 19, 0, 3])
    h16 = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_(True)
    h32 = h16.detach().float().requires_grad_(True)
    loss16, loss32 = TiedCrossEntropy.apply(h16, head, y, 4), TiedCrossEntropy.apply(h32, head, y, 4)
    assert loss16.dtype == torch.float32 and loss16.item() == loss32.item()
    (1.7 * loss16).backward()
    (1.7 * loss32).backward()
    assert h16.grad.dtype == torch.bfloat16 and torch.equal(h16.grad, h32.grad.bfloat16())


def test_sample_shifted_chunk_equals_the_max_shifted_one_with_and_without_multiplicities():
    from newllm.head import SHIFT_SAMPLE_ROWS, _max_shifted_chunk, _sample_shifted_chunk

    gen = torch.Generator().manual_seed(0)
    distinct = torch.randn(600, 8, generator=gen) * 2
    merged = torch.cat([distinct[:400], distinct[:1].expand(200, 8)])  # one row 201 times
    for embeddings in (distinct, merged):
        head = tied_head(embeddings)
        assert (head.log_mult is None) == (embeddings is distinct)
        sample, sample_log_mult = head.shift_rows
        assert sample.shape[0] >= SHIFT_SAMPLE_ROWS
        h, ids = torch.randn(16, 8, generator=gen) * 3, torch.randint(0, 600, (16,), generator=gen)
        y = head.classes(ids)
        fast, exact = _sample_shifted_chunk(h, head, y), _max_shifted_chunk(h, head, y)
        assert torch.allclose(fast[0], exact[0], atol=1e-5) and torch.allclose(fast[1], exact[1], atol=1e-5)
        # and both are the float64 cross-entropy over all 600 ids
        logits = h.double() @ embeddings.double().t()
        expected = torch.logsumexp(logits, dim=1) - logits[torch.arange(16), ids]
        assert torch.allclose(fast[0].double(), expected, atol=1e-4)
    # the largest multiplicity is in the sample: ln 201 is the merged head's largest ln m
    assert torch.isclose(sample_log_mult.max(), torch.tensor(201.0).log())


def test_sample_shifted_chunk_falls_back_where_the_sample_misses_the_maximum(monkeypatch):
    # 300 long rows orthogonal to h1 = (200, 0) fill the sample (logit 0); the short row (1, 0)
    # outside it has logit 200, so exp(z - shift) overflows and that row takes the exact path
    from newllm import head as head_module
    from newllm.head import SHIFT_SAMPLE_ROWS, _sample_shifted_chunk

    long_rows = torch.stack([torch.zeros(300), 10 + torch.arange(300.0) / 100], dim=1)
    rows = torch.cat([long_rows, torch.tensor([[1.0, 0.0]])])
    head = tied_head(rows)
    assert SHIFT_SAMPLE_ROWS < 300 and not (head.shift_rows[0][:, 0] != 0).any()  # the short row is not sampled
    h = torch.tensor([[200.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([300, 5])
    exact_rows = []
    real = head_module._max_shifted_chunk
    monkeypatch.setattr(head_module, "_max_shifted_chunk", lambda h, head, y: exact_rows.append(h) or real(h, head, y))
    nll, grad = _sample_shifted_chunk(h, head, y)
    assert len(exact_rows) == 1 and torch.equal(exact_rows[0], h[:1])  # only the overflowing row
    logits = h.double() @ rows.double().t()
    expected = torch.logsumexp(logits, dim=1) - logits[torch.arange(2), y]
    assert torch.isfinite(nll).all() and torch.allclose(nll.double(), expected, atol=1e-5)
    p = torch.softmax(logits, dim=1)
    assert torch.allclose(grad.double(), p @ rows.double() - rows.double()[y], atol=1e-5)


def test_tied_cross_entropy_chunks_rows_and_picks_the_path_by_the_rows_dtype(monkeypatch):
    # fp32 rows: ceil(B / chunk) calls of the sample-shifted chunk on consecutive row blocks,
    # never the max pass; bf16 rows: the max-shifted chunk; both equal the float64 loss
    from newllm import head as head_module

    gen = torch.Generator().manual_seed(1)
    E, h, y = torch.randn(50, 8, generator=gen), torch.randn(7, 8, generator=gen), torch.randint(0, 50, (7,), generator=gen)
    logits = h.double() @ E.double().t()
    expected = (torch.logsumexp(logits, dim=1) - logits[torch.arange(7), y]).mean()
    calls = {"sample": [], "max": []}
    real_sample, real_max = head_module._sample_shifted_chunk, head_module._max_shifted_chunk
    monkeypatch.setattr(
        head_module, "_sample_shifted_chunk", lambda h, head, y: calls["sample"].append(h) or real_sample(h, head, y)
    )
    monkeypatch.setattr(head_module, "_max_shifted_chunk", lambda h, head, y: calls["max"].append(h) or real_max(h, head, y))
    loss = TiedCrossEntropy.apply(h, tied_head(E), y, 3)
    assert [part.shape[0] for part in calls["sample"]] == [3, 3, 1] and not calls["max"]
    assert torch.equal(torch.cat(calls["sample"]), h) and torch.isclose(loss.double(), expected, atol=1e-6)
    calls["sample"].clear()
    hidden = h.clone().requires_grad_(True)
    loss = TiedCrossEntropy.apply(hidden, tied_head(E, "bf16"), y, 4)
    loss.backward()
    assert [part.shape[0] for part in calls["max"]] == [4, 3] and not calls["sample"]
    assert torch.isclose(loss.double(), expected, rtol=2e-2)  # bf16 matmul operands: ~3 significant digits
    p = torch.softmax(logits, dim=1)
    exact_grad = (p @ E.double() - E.double()[y]) / 7
    assert hidden.grad.dtype == torch.float32 and torch.allclose(hidden.grad.double(), exact_grad, atol=5e-3)
