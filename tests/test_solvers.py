"""newllm.solvers: every solver reaches the sequential recurrence; cache rows follow docs/method.md §6."""

import json

import pytest
import torch
from torch import nn

from newllm import solvers
from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights
from newllm.solvers import SOLVERS, SolverStats, StreamMap, fixed_point_residual, get_solver

N, VOCAB, D_E, D_C, LAYERS, CHUNK = 150, 50, 6, 8, 2, 16


def make_map(num_input_tokens: int = 2, n: int = N, seed: int = 0) -> StreamMap:
    torch.manual_seed(seed)
    token_input = TokenInput(torch.randn(VOCAB, D_E), num_input_tokens)
    block = ContextBlock(ModelConfig(D_C, D_E, num_input_tokens=num_input_tokens, num_layers=LAYERS))
    init_weights(block)
    return StreamMap(block.eval(), token_input, torch.randint(0, VOCAB, (n,)), batch_size=32)


def deep_map(smap: StreamMap, batch_size: int = 4096) -> StreamMap:
    """``smap``'s token input and stream under a new three-layer ContextBlock (initialised
    from torch's global RNG), so a layer other than the last exists."""
    block = ContextBlock(ModelConfig(D_C, D_E, num_input_tokens=smap.token_input.num_input_tokens, num_layers=3))
    init_weights(block)
    return StreamMap(block, smap.token_input, smap.stream, batch_size)


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
    """docs/method.md §6: cache[i] = F(c_{i-1}, x̃_i) for every layer, c_{-1} = 0 (no shift)."""
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
    deep = deep_map(smap)
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
    gradient), without it through every step.

    The loss is the last context projected on a fixed random direction: its plain sum
    would be the sum of a LayerNorm output with unit gain, constant in exact arithmetic,
    so every gradient before the last LayerNorm would be rounding noise (~1e-7) and the
    two gradients could not be told apart."""
    smap = make_map()
    direction = torch.randn(D_C, generator=torch.Generator().manual_seed(1))
    inputs = smap.token_input(smap.stream, torch.arange(smap.n))[None]  # [1, n, N_in·d_e]
    with torch.no_grad():
        torch.testing.assert_close(solvers.unroll(smap.block, inputs, torch.zeros(1, D_C))[0], reference(smap), atol=1e-6, rtol=0)
    short = inputs[:, :5]
    grads = {}
    for truncate in (False, True):
        smap.block.zero_grad()
        (solvers.unroll(smap.block, short, torch.zeros(1, D_C), truncate=truncate)[0, -1, -1] @ direction).backward()
        grads[truncate] = [p.grad.clone() for p in smap.block.parameters()]
    smap.block.zero_grad()
    with torch.no_grad():
        previous = solvers.unroll(smap.block, short[:, :4], torch.zeros(1, D_C))[:, -1, -1]
    (smap.block(previous, short[:, 4])[0, -1] @ direction).backward()  # the last step alone
    one_step = [p.grad for p in smap.block.parameters()]
    # the same last step from the same (detached) context: equal up to a few ulps of the
    # largest gradient entry (~2); through every step the gradients differ by O(1)
    scale = max(float(g.abs().max()) for g in one_step)
    rounding = 16 * torch.finfo(torch.float32).eps * scale
    for a, b in zip(grads[True], one_step):
        torch.testing.assert_close(a, b, atol=rounding, rtol=0)
    assert max(float((a - b).abs().max()) for a, b in zip(grads[False], one_step)) > 0.01 * scale


# ------------------------------------------------------------------ mutation-testing cases


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_reaches_the_recurrence_when_windows_are_embedded_per_call(name, monkeypatch):
    """Above INPUT_CACHE_MAX_ELEMENTS nothing is cached: every step embeds its own windows
    (sweeps in batches of 32, shooting chunks, the sequential pass) and the result is the same."""
    monkeypatch.setattr(solvers, "INPUT_CACHE_MAX_ELEMENTS", 0)
    smap = make_map()
    out, _ = get_solver(name)(smap, **EXACT[name])
    assert smap._inputs is None
    torch.testing.assert_close(out, reference(smap), atol=1e-5, rtol=0)


def test_windows_are_cached_up_to_the_limit_inclusive(monkeypatch):
    smap = make_map(n=10)
    size = smap.n * smap.token_input.output_dim
    monkeypatch.setattr(solvers, "INPUT_CACHE_MAX_ELEMENTS", size - 1)
    smap.inputs(torch.tensor([3]))
    assert smap._inputs is None  # one element too many
    monkeypatch.setattr(solvers, "INPUT_CACHE_MAX_ELEMENTS", size)
    got = smap.inputs(torch.tensor([3, 0]))
    torch.testing.assert_close(smap._inputs, smap.token_input(smap.stream, torch.arange(10)), atol=0, rtol=0)
    torch.testing.assert_close(got, smap.token_input(smap.stream, torch.tensor([3, 0])), atol=0, rtol=0)


def test_a_jacobi_sweep_in_batches_of_one_token():
    smap = make_map(n=9)
    one = StreamMap(smap.block, smap.token_input, smap.stream, batch_size=1)
    out, _ = get_solver("jacobi")(one, max_iter=10, tol=0.0)
    torch.testing.assert_close(out, reference(smap), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="batch_size"):
        StreamMap(smap.block, smap.token_input, smap.stream, batch_size=0)


def test_shooting_argument_checks_one_at_a_time():
    smap = make_map(n=20)
    with pytest.raises(ValueError, match="burn_in"):
        get_solver("shooting")(smap, burn_in=-1)
    with pytest.raises(ValueError, match="skip_below"):
        get_solver("shooting")(smap, skip_below=-1e-3)
    out, stats = get_solver("shooting")(smap, chunk_size=4, skip_below=0.0, tol=1e-13)  # 0 = re-run on any move
    torch.testing.assert_close(out, reference(smap), atol=1e-5, rtol=0)
    assert stats.converged and stats.tol == 1e-13
    assert get_solver("shooting")(smap)[1].tol == 1e-5  # the documented default


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_reported_seconds_lie_within_the_measured_wall_time(name):
    import time

    smap = make_map(n=20)
    t0 = time.perf_counter()
    _, stats = get_solver(name)(smap)
    assert 0 <= stats.seconds <= time.perf_counter() - t0


@pytest.mark.parametrize("name", ["jacobi", "shooting"])
def test_warm_start_reduces_all_layers_to_the_final_one_and_casts_to_float32(name):
    """Three layers (layer 1 is not layer -1) and a float64 init: the warm start is the
    final layer's contexts as float32, so the exact solution converges in one sweep."""
    torch.manual_seed(3)
    smap = make_map()
    deep = deep_map(smap, 32)
    exact, _ = get_solver("sequential")(deep)
    extra = {"chunk_size": CHUNK, "burn_in": 0} if name == "shooting" else {}
    out, stats = get_solver(name)(deep, init=exact.double(), tol=1e-10, **extra)
    assert stats.sweeps == 1 and stats.converged and stats.evaluations == N
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=0)


def test_shooting_warm_start_is_the_first_residuals_c0():
    """Three layers; init = the exact solution with row 5 moved by delta (not a chunk boundary): round 1
    recomputes every row exactly, so its residual is mean_d delta² (the change from init)."""
    torch.manual_seed(3)
    smap = make_map()
    smap = deep_map(smap, 32)
    exact = reference(smap)
    init = exact.clone()
    delta = torch.linspace(-0.05, 0.05, D_C)
    init[5, -1] += delta
    expected = float(delta.pow(2).mean())
    out, stats = get_solver("shooting")(smap, init=init, tol=2 * expected, chunk_size=CHUNK)
    assert stats.sweeps == 1 and stats.converged and stats.residual == pytest.approx(expected, rel=1e-3)
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=0)


class Forgets(nn.Module):
    """A map that forgets at once: ``c_i = x_i / 10`` (one layer; ``keep = 1``: the running
    sum ``c_i = c_{i-1} + x_i / 10``).  Forgetting at once, a chunk is exact after one step
    from any boundary and a burn-in of one token already finds the exact boundary."""

    context_dim, num_layers = D_E, 1

    def __init__(self, keep: float = 0.0):
        super().__init__()
        self.keep = keep

    def forward(self, context, token_input):
        return (self.keep * context + 0.1 * token_input).unsqueeze(1)


def forgetting_map(n: int) -> StreamMap:
    torch.manual_seed(4)
    token_input = TokenInput(torch.randn(VOCAB, D_E), 1)  # LayerNorm'd rows: mean_d x² just below 1
    return StreamMap(Forgets(), token_input, torch.randint(0, VOCAB, (n,)), 32)


@pytest.mark.parametrize("n,burn_in", [(N, 1), (N, 4), (20, 4)])
def test_shooting_with_an_exact_burn_in_stops_after_one_round(n, burn_in):
    """Burn-in boundaries are exact, so no boundary moves after round 1: one round, residual
    0 (the kept moves), evaluations = (K-1)·W burn-in tokens + n (no padding counted)."""
    smap = forgetting_map(n)
    K = -(-n // CHUNK)
    out, stats = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=burn_in, tol=1e-13)
    torch.testing.assert_close(out[:, -1], 0.1 * smap.inputs(torch.arange(n)), atol=0, rtol=0)
    assert (stats.sweeps, stats.residual, stats.converged, stats.sequential_tokens) == (1, 0.0, True, 0)
    assert stats.evaluations == (K - 1) * burn_in + n


def test_shooting_from_zero_boundaries_by_hand():
    """No burn-in: round 1 computes every chunk exactly from a zero boundary (c_i = x_i), its
    residual is the change from C^0 = 0: max_i mean_d c_i² (about 0.01); round 2 re-runs chunks 1..K-1
    (chunk 0's boundary never moves), changes nothing, and stops: evaluations = 2n - T."""
    smap = forgetting_map(N)
    x = 0.1 * smap.inputs(torch.arange(N))
    _, first = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=0, max_iter=1, tol=1e9)
    assert first.sweeps == 1 and first.converged and first.evaluations == N
    assert first.residual == pytest.approx(float(x.pow(2).mean(dim=-1).max()), rel=1e-6)
    for skip_below in (0.0, solvers.ROUNDING_NOISE):
        out, stats = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=0, tol=1e-13, skip_below=skip_below)
        torch.testing.assert_close(out[:, -1], x, atol=0, rtol=0)
        assert (stats.sweeps, stats.residual, stats.converged, stats.sequential_tokens) == (2, 0.0, True, 0)
        assert stats.evaluations == 2 * N - CHUNK


def test_shooting_kept_chunks_report_their_boundary_move():
    """skip_below above every move: after round 1 (zero boundaries) nothing is re-run, and the
    residual is the largest kept boundary move, max_k mean_d c_{kT-1}² (chunk k-1's last
    context against the zero boundary of chunk k)."""
    smap = make_map()
    out, stats = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=0, tol=1e-13, skip_below=1e9)
    ends = out[CHUNK - 1 :: CHUNK, -1][: -(-N // CHUNK) - 1]  # the last context of chunks 0 .. K-2
    assert stats.sweeps == 1 and stats.converged and stats.evaluations == N
    assert stats.residual == pytest.approx(float(ends.pow(2).mean(dim=-1).max()), rel=1e-5)


def test_shooting_residual_exactly_at_the_tolerance_is_not_converged():
    smap = make_map()
    kwargs = {"chunk_size": CHUNK, "burn_in": 0, "max_iter": 1, "fallback": False}
    first = get_solver("shooting")(smap, tol=0.0, **kwargs)[1].residual
    _, edge = get_solver("shooting")(smap, tol=first, **kwargs)
    assert not edge.converged and edge.sweeps == 1 and edge.residual == first


def test_shooting_finishes_sequentially_from_the_first_moved_boundary():
    """max_iter = 1 with zero boundaries: chunk 0 is the only consistent chunk (its boundary
    never moves, even with skip_below = 0), so tokens T..n-1 are finished sequentially:
    evaluations n + (n - T), residual = chunk 0's move = 0."""
    smap = make_map()
    out, stats = get_solver("shooting")(smap, chunk_size=CHUNK, burn_in=0, max_iter=1, tol=1e-13, skip_below=0.0)
    torch.testing.assert_close(out, reference(smap), atol=1e-5, rtol=0)
    assert (stats.sweeps, stats.residual, stats.converged) == (1, 0.0, True)
    assert (stats.sequential_tokens, stats.evaluations) == (N - CHUNK, 2 * N - CHUNK)


def test_shooting_stall_rule_by_hand():
    """The running sum c_i = c_{i-1} + x/10 over one repeated token (x = ±1 alternating, so
    mean_d x² = m ≈ 1): c_i = (i+1)·x/10.  With n = 64, T = 16, W = 4 the burn-in boundaries
    are 4x/10 (largest move 0.16 m); round 1 moves boundaries 2, 3 to 20x/10 (move 2.56 m >
    0.5 · 0.16 m): it stalls, tokens 16..63 are finished sequentially.  Evaluations:
    3·4 burn-in + 64 + 48."""
    token_input = TokenInput(torch.tensor([[1.0, -1.0] * (D_E // 2)] * VOCAB), 1)
    smap = StreamMap(Forgets(keep=1.0), token_input, torch.zeros(64, dtype=torch.long), 32)
    out, stats = get_solver("shooting")(smap, chunk_size=16, burn_in=4)
    x = smap.inputs(torch.tensor([0]))
    torch.testing.assert_close(out[:, -1], 0.1 * torch.arange(1, 65, dtype=torch.float32)[:, None] * x, atol=1e-5, rtol=0)
    assert (stats.sweeps, stats.residual, stats.converged) == (1, 0.0, True)
    assert (stats.sequential_tokens, stats.evaluations) == (48, 3 * 4 + 64 + 48)


def test_shooting_does_not_stall_while_each_round_shrinks_the_largest_move():
    """c_i = a·c_{i-1} + u (u = x/10, one repeated token, a = 0.66), n = 4 chunks of one token,
    burn-in 1.  Burn-in boundaries b_k = u (largest move m = mean_d u², chunk 0's zero boundary
    included).  Round 1 moves b_2, b_3 by a·u (a² m = 0.44 m < m/2: no stall), round 2 moves b_3
    by a²·u (a⁴ m < a² m/2), round 3 moves nothing: 3 rounds, no sequential finish,
    evaluations 3 burn-in + 4 + 2 + 1."""
    a = 0.66
    token_input = TokenInput(torch.tensor([[1.0, -1.0] * (D_E // 2)] * VOCAB), 1)
    smap = StreamMap(Forgets(keep=a), token_input, torch.zeros(4, dtype=torch.long), 32)
    out, stats = get_solver("shooting")(smap, chunk_size=1, burn_in=1)
    u = 0.1 * smap.inputs(torch.tensor([0]))
    expected = torch.cat([sum(a**j for j in range(i + 1)) * u for i in range(4)])
    torch.testing.assert_close(out[:, -1], expected, atol=1e-6, rtol=0)
    assert (stats.sweeps, stats.residual, stats.converged) == (3, 0.0, True)
    assert (stats.sequential_tokens, stats.evaluations) == (0, 3 + 4 + 2 + 1)


class HalfForgets(nn.Module):
    """``c_i = diag(1, 0) c_{i-1} + (1, 1)``: coordinate 0 counts tokens, coordinate 1 forgets."""

    context_dim, num_layers = 2, 1

    def forward(self, context, token_input):
        return (context * torch.tensor([1.0, 0.0]) + 1.0).unsqueeze(1)


def test_shooting_halving_the_largest_move_exactly_is_no_stall():
    """n = 4 chunks of one token, burn-in 1: boundaries b_k = (1, 1), largest move 1.  Round 1
    moves b_2, b_3 to (2, 1): mean_d δ² = 0.5, exactly half, so round 2 runs (re-running chunks
    2, 3); it moves b_3 to (3, 1), again 0.5 > 0.5 · 0.5: a stall, token 3 is finished
    sequentially.  Evaluations 3 + 4 + 2 + 1, all values exact in float32."""
    token_input = TokenInput(torch.randn(VOCAB, D_E), 1)
    smap = StreamMap(HalfForgets(), token_input, torch.zeros(4, dtype=torch.long), 32)
    out, stats = get_solver("shooting")(smap, chunk_size=1, burn_in=1)
    assert out[:, -1].tolist() == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]]
    assert (stats.sweeps, stats.residual, stats.converged) == (2, 0.0, True)
    assert (stats.sequential_tokens, stats.evaluations) == (1, 3 + 4 + 2 + 1)


def test_unroll_defaults_to_the_full_gradient():
    """Loss projected on a random direction, as above: with a plain sum the full and the
    truncated gradient differ only by rounding, so a default of ``truncate=True`` could pass."""
    smap = make_map()
    direction = torch.randn(D_C, generator=torch.Generator().manual_seed(1))
    short = smap.token_input(smap.stream, torch.arange(5))[None]
    grads = {}
    for kwargs in ({}, {"truncate": False}, {"truncate": True}):
        smap.block.zero_grad()
        (solvers.unroll(smap.block, short, torch.zeros(1, D_C), **kwargs)[0, -1, -1] @ direction).backward()
        grads[kwargs.get("truncate")] = [p.grad.clone() for p in smap.block.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads[None], grads[False]))
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(grads[None], grads[True]))
