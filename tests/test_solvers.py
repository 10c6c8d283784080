"""newllm.solvers: every solver reaches the sequential recurrence; cache rows follow SPEC §6."""

import json

import pytest
import torch
from torch import nn

from newllm import solvers
from newllm.model import ContextBlock, TokenInput, init_weights
from newllm.solvers import SOLVERS, SolverStats, StreamMap, fixed_point_residual, get_solver

N, VOCAB, D_E, D_C, LAYERS, CHUNK = 150, 50, 6, 8, 2, 16


def make_map(num_input_tokens: int = 2, n: int = N, seed: int = 0) -> StreamMap:
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(VOCAB, D_E), num_input_tokens)
    block = ContextBlock(D_C, token_input.output_dim, num_layers=LAYERS)
    init_weights(block)
    return StreamMap(block.eval(), token_input, torch.randint(0, VOCAB, (n,)), batch_size=32)


def reference(smap: StreamMap) -> torch.Tensor:
    """The recurrence written out token by token, independent of the solvers."""
    context, rows = torch.zeros(1, D_C), []
    with torch.no_grad():
        for i in range(smap.n):
            y = smap.block(context, smap.token_input(smap.stream, torch.tensor([i])))
            rows.append(y[0])
            context = y[:, -1]
    return torch.stack(rows)


EXACT = {  # settings that reach the exact recurrence on a 150-token stream
    "sequential": {},
    "jacobi": {"max_iter": N + 1, "tol": 1e-13},  # exact after N sweeps, verified by one more
    "shooting": {"chunk_size": CHUNK, "burn_in": 4, "tol": 1e-13},
}


@pytest.mark.parametrize("num_input_tokens", [1, 2])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_equals_the_sequential_recurrence(name, num_input_tokens):
    smap = make_map(num_input_tokens)
    out, stats = get_solver(name)(smap, **EXACT[name])
    assert out.shape == (N, LAYERS, D_C)
    torch.testing.assert_close(out, reference(smap), atol=1e-5, rtol=0)
    assert stats.converged and stats.method == name and stats.tokens == N


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_cache_row_i_is_the_block_output_after_token_i(name):
    """SPEC §6: cache[i] = F(c_{i-1}, x̃_i) for every layer, c_{-1} = 0 (no shift)."""
    smap = make_map()
    out, _ = get_solver(name)(smap, **EXACT[name])
    prev = torch.cat([torch.zeros(1, D_C), out[:-1, -1]])
    with torch.no_grad():
        expected = smap.block(prev, smap.token_input(smap.stream, torch.arange(N)))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert fixed_point_residual(smap, out) < 1e-11


@pytest.mark.parametrize("i", [40, CHUNK - 1, 2 * CHUNK])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_row_i_does_not_depend_on_token_i_plus_1(name, i):
    smap = make_map()
    out, _ = get_solver(name)(smap, **EXACT[name])
    stream = smap.stream.clone()
    stream[i + 1] = (stream[i + 1] + 1) % VOCAB
    perturbed, _ = get_solver(name)(StreamMap(smap.block, smap.token_input, stream, 32), **EXACT[name])
    torch.testing.assert_close(perturbed[: i + 1], out[: i + 1], atol=1e-6, rtol=0)
    assert (perturbed[i + 1] - out[i + 1]).abs().max() > 1e-3  # the perturbation is seen from row i+1 on


@pytest.mark.parametrize("k", [1, 5, 17])
def test_jacobi_after_k_sweeps_is_exact_before_position_k(k):
    smap = make_map()
    out, stats = get_solver("jacobi")(smap, max_iter=k, tol=0.0)
    ref = reference(smap)
    assert stats.sweeps == k and not stats.converged
    torch.testing.assert_close(out[:k], ref[:k], atol=1e-6, rtol=0)
    assert (out[k] - ref[k]).abs().max() > 1e-3


def test_a_solver_short_of_tolerance_reports_not_converged():
    smap = make_map()
    _, jacobi = get_solver("jacobi")(smap, max_iter=2, tol=1e-12)
    assert not jacobi.converged and jacobi.residual >= 1e-12 and jacobi.sweeps == 2
    _, shooting = get_solver("shooting")(smap, max_iter=1, tol=1e-12, chunk_size=CHUNK, burn_in=0, fallback=False)
    assert not shooting.converged and shooting.residual >= 1e-12 and shooting.sweeps == 1


@pytest.mark.parametrize("name", ["jacobi", "shooting"])
def test_warm_start_from_the_exact_solution_converges_in_one_sweep(name):
    smap = make_map()
    ref = reference(smap)
    for init in (ref, ref[:, -1]):  # [n, L, d_c] or the final-layer contexts [n, d_c]
        out, stats = get_solver(name)(smap, init=init, tol=1e-10, **({"chunk_size": CHUNK} if name == "shooting" else {}))
        assert stats.sweeps == 1 and stats.converged and stats.warm_start
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_unknown_solver_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="jacobi.*sequential.*shooting"):
        get_solver("newton")


def test_bad_arguments_raise():
    smap = make_map()
    with pytest.raises(ValueError, match="init must be"):
        get_solver("jacobi")(smap, init=torch.zeros(N - 1, D_C))
    with pytest.raises(ValueError, match="chunk_size"):
        get_solver("shooting")(smap, chunk_size=0)
    with pytest.raises(ValueError, match="max_iter"):
        get_solver("jacobi")(smap, max_iter=0)
    with pytest.raises(ValueError, match="stream"):
        StreamMap(smap.block, smap.token_input, torch.zeros(0, dtype=torch.long))


def test_stats_are_a_json_ready_record():
    smap = make_map()
    _, stats = get_solver("shooting")(smap, chunk_size=CHUNK)
    assert isinstance(stats, SolverStats)
    record = json.loads(json.dumps(stats.as_dict()))
    assert record["method"] == "shooting" and record["chunks"] == -(-N // CHUNK) and record["chunk_size"] == CHUNK
    assert record["evaluations"] >= N and record["seconds"] >= 0


@pytest.mark.parametrize("chunk_size", [1, 7, N, 10 * N])
def test_shooting_chunk_sizes_from_one_token_to_the_whole_stream(chunk_size, monkeypatch):
    monkeypatch.setattr(solvers, "STEP_INPUT_TOKENS", 5)  # windows gathered a few steps at a time
    smap = make_map(n=60)
    out, stats = get_solver("shooting")(smap, chunk_size=chunk_size, tol=1e-13)
    torch.testing.assert_close(out, reference(smap), atol=1e-5, rtol=0)
    assert stats.chunk_size == min(chunk_size, 60) and stats.converged


class RunningSum(nn.Module):
    """A map that never forgets: ``c_i = c_{i-1} + x_i`` (one layer)."""

    context_dim, num_layers = D_E, 1

    def forward(self, context, token_input):
        return (context + token_input).unsqueeze(1)


def test_shooting_finishes_sequentially_when_the_map_does_not_forget():
    smap = make_map(num_input_tokens=1)
    smap = StreamMap(RunningSum(), smap.token_input, smap.stream, 32)
    out, stats = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=4)
    expected = torch.cumsum(smap.token_input(smap.stream, torch.arange(N)), dim=0)
    torch.testing.assert_close(out[:, -1], expected, atol=1e-4, rtol=1e-5)
    assert stats.converged and 0 < stats.sequential_tokens < N and stats.sweeps < 5


def _hand_sweep(smap, contexts):
    """One Jacobi sweep by hand: row i from row i - 1 of ``contexts`` (zeros before 0), all layers."""
    prev = torch.cat([torch.zeros(1, D_C), contexts[:-1]])
    with torch.no_grad():
        return torch.stack(
            [smap.block(prev[i : i + 1], smap.token_input(smap.stream, torch.tensor([i])))[0] for i in range(smap.n)]
        )


def test_solver_statistics_by_hand():
    import time

    smap = make_map(n=6)
    t0 = time.perf_counter()
    _, seq = get_solver("sequential")(smap)
    elapsed = time.perf_counter() - t0
    assert 0 <= seq.seconds <= elapsed
    assert (
        seq.as_dict() | {"seconds": 0}
        == SolverStats("sequential", 1, 0.0, True, 0, 6, 0.0, warm_start=False, chunks=1, chunk_size=6, evaluations=6).as_dict()
    )
    # Jacobi from zeros: exact after n = 6 sweeps, so sweep 7 moves nothing (residual exactly 0)
    out, jac = get_solver("jacobi")(smap, tol=1e-12)
    assert (jac.sweeps, jac.residual, jac.converged, jac.tol) == (7, 0.0, True, 1e-12)
    assert (jac.chunks, jac.chunk_size, jac.evaluations, jac.warm_start, jac.tokens) == (6, 1, 42, False, 6)
    # stopped by max_iter: the residual is max_i mean_d of the last sweep's change in the final context
    contexts = [torch.zeros(6, D_C)]
    for _ in range(3):
        contexts.append(_hand_sweep(smap, contexts[-1])[:, -1])
    out, cut = get_solver("jacobi")(smap, max_iter=3, tol=0.0)
    torch.testing.assert_close(out[:, -1], contexts[3], atol=1e-6, rtol=0)
    expected = float((contexts[3] - contexts[2]).pow(2).mean(dim=-1).max())
    assert (cut.sweeps, cut.converged, cut.evaluations) == (3, False, 18) and cut.residual == pytest.approx(expected, rel=1e-5)
    # a residual exactly at the tolerance is not converged (strictly below)
    first = get_solver("jacobi")(smap, max_iter=1, tol=0.0)[1].residual
    _, edge = get_solver("jacobi")(smap, max_iter=1, tol=first)
    assert not edge.converged and edge.sweeps == 1
    assert get_solver("jacobi")(smap)[1].tol == 1e-5  # the documented default


def test_fixed_point_residual_is_one_sweep_over_all_layers():
    smap = make_map(n=7)
    exact = reference(smap)
    assert fixed_point_residual(smap, exact) < 1e-12
    noisy = exact + 0.1 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(1))
    swept = _hand_sweep(smap, noisy[:, -1])
    assert fixed_point_residual(smap, noisy) == pytest.approx(float((swept - noisy).pow(2).mean(dim=(1, 2)).max()), rel=1e-5)
    # three layers: the sweep starts from the final layer's contexts, not from any other layer
    torch.manual_seed(2)
    deep = StreamMap(ContextBlock(D_C, smap.token_input.output_dim, num_layers=3), smap.token_input, smap.stream)
    init_weights(deep.block)
    exact, _ = get_solver("sequential")(deep)
    assert fixed_point_residual(deep, exact) < 1e-12


def test_jacobi_on_a_map_that_never_forgets_stops_at_the_default_budget():
    smap = make_map(num_input_tokens=1, n=450)
    smap = StreamMap(RunningSum(), smap.token_input, smap.stream, 512)
    _, stats = get_solver("jacobi")(smap)
    assert stats.sweeps == 400 and not stats.converged and stats.evaluations == 400 * 450


def test_unroll_is_the_recurrence_and_truncate_stops_gradients_after_one_step():
    """unroll over one row equals the token-by-token reference; with ``truncate`` the
    gradient of the last context reaches F only through its own step (CVFP's one-step
    gradient), without it through every step."""
    smap = make_map()
    inputs = smap.token_input(smap.stream, torch.arange(smap.n))[None]  # [1, n, N_in·d_e]
    with torch.no_grad():
        assert torch.allclose(solvers.unroll(smap.block, inputs, torch.zeros(1, D_C))[0], reference(smap), atol=1e-6)
    short = inputs[:, :5]
    grads = {}
    for truncate in (False, True):
        smap.block.zero_grad()
        solvers.unroll(smap.block, short, torch.zeros(1, D_C), truncate=truncate)[0, -1, -1].sum().backward()
        grads[truncate] = [p.grad.clone() for p in smap.block.parameters()]
    smap.block.zero_grad()
    with torch.no_grad():
        previous = solvers.unroll(smap.block, short[:, :4], torch.zeros(1, D_C))[:, -1, -1]
    smap.block(previous, short[:, 4])[0, -1].sum().backward()  # the last step alone
    one_step = [p.grad for p in smap.block.parameters()]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[True], one_step))
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[False], one_step))
