"""Context-cache benchmark: exact cache at <= 25 % of today's export time.

For each context_dim and each block (``random`` = docs/method.md §3 init, as the
``untrained_context`` control exports it; ``trained`` = the same init after Phase 1 CVFP
training with ``newllm.phase1.train_phase1``, default settings, ``--train-iterations`` at
most) it prints, per solver of ``newllm.solvers``: wall seconds, sweeps (Jacobi sweeps /
shooting rounds), map evaluations per token, final residual, converged, the ratio to
*today's* export solve (target <= 0.25), the max |Δ| to the sequential recurrence and
the fixed-point residual ``max_i mean (F(C)_i - C_i)²`` of the result (rounding level
for an exact solution).  Not a test: it asserts nothing.

*Today* is ``solve_contexts_jacobi`` of ``newllm/phase1.py`` as of commit c602e35 (Jacobi
sweeps from zero with a gather of the previous contexts and an embedding per batch, plus
one all-layer sweep at the end), copied below so that the ratio stays measurable once the
export moves to the solver registry; it runs on today's ``TokenInput``.

Stream: by default the first conversations of the embedded chitchat corpus (file order,
message contents joined by newlines, GPT-2 ids, conversations separated by
<|endoftext|>) up to ``--tokens`` (84,000 ≈ the default study's largest training set,
160 conversations); ``--stream random`` uses uniform random ids instead.  Embeddings are
random N(0, 1) (the default study's word2vec table is trained in the pipeline; ``x̃`` is
layer-normalised either way).  A trained block contracts more than a random one (it
forgets its start sooner), so it needs fewer sweeps/rounds.  An untrained block can be
expansive (d_c 128 here): rounding differences then grow along the stream, so even two
exact float32 solutions differ by O(1) (max |Δ| to sequential is meaningless there; the
fixed-point residual is not), Jacobi cannot converge and shooting finishes sequentially.

    nice -n 10 python benchmarks/context_cache.py                  # d_c 64 and 128, d_e 64, 84k tokens
    nice -n 10 python benchmarks/context_cache.py --chunk-sizes 128 256 512 --threads 1
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch
from torch import Tensor

from newllm.metrics import effective_rank
from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights
from newllm.solvers import StreamMap, fixed_point_residual, get_solver
from newllm.tokenizer import EOT_ID, VOCAB_SIZE


# ----------------------------------------------------------------- today's solver (c602e35)
def _today_previous_contexts(contexts: Tensor, positions: Tensor) -> Tensor:
    prev = contexts[(positions - 1).clamp(min=0)]
    return prev * (positions > 0).unsqueeze(-1).to(prev.dtype)


def _today_sweep(block, token_input, stream, contexts, batch_size, all_layers=False):
    n = stream.shape[0]
    shape = (n, block.num_layers, block.context_dim) if all_layers else (n, block.context_dim)
    out = torch.empty(shape, device=contexts.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            pos = torch.arange(start, min(start + batch_size, n), device=stream.device)
            y = block(_today_previous_contexts(contexts, pos), token_input(stream, pos))
            out[start : start + pos.shape[0]] = y if all_layers else y[:, -1]
    return out


def today_solve_contexts_jacobi(block, token_input, stream, max_sweeps=400, tolerance=1e-5, batch_size=4096):
    """``newllm.phase1.solve_contexts_jacobi`` at c602e35 (the export's solver then)."""
    contexts = torch.zeros(stream.shape[0], block.context_dim, device=stream.device)
    max_res, sweeps = math.inf, 0
    for sweeps in range(1, max_sweeps + 1):
        new = _today_sweep(block, token_input, stream, contexts, batch_size)
        max_res = float((new - contexts).pow(2).mean(dim=-1).max())
        contexts = new
        if max_res < tolerance:
            break
    outputs = _today_sweep(block, token_input, stream, contexts, batch_size, all_layers=True)
    return outputs, {"sweeps": sweeps, "residual": max_res, "converged": max_res < tolerance}


# ----------------------------------------------------------------- inputs
def chitchat_stream(tokens: int) -> np.ndarray:
    """First chitchat conversations (file order) as one GPT-2 id stream of ``tokens`` ids."""
    from newllm.data import chitchat_json_path, chitchat_to_rows, sample_text
    from newllm.tokenizer import install_tokenizer_files, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        install_tokenizer_files("packaged", tmp)
        tokenizer = load_tokenizer(tmp)
    ids: list[int] = []
    for row in chitchat_to_rows(chitchat_json_path()):
        ids += tokenizer(sample_text(row))["input_ids"] + [EOT_ID]
        if len(ids) >= tokens:
            break
    return np.asarray(ids[:tokens], dtype=np.int64)


def train_block(block: ContextBlock, token_input: TokenInput, stream: Tensor, iterations: int):
    """Phase 1 (default settings, at most ``iterations``); returns the final train contexts."""
    from newllm.phase1 import Phase1Config, train_phase1

    cfg = Phase1Config(max_iterations=iterations, min_iterations=min(5, iterations))
    result = train_phase1(block, token_input, stream, cfg)
    block.eval()
    extra = getattr(result, "extra", None) or {}
    contexts = extra["contexts"] if "contexts" in extra else result.contexts
    print(
        f"  trained: {len(result.history)} Phase 1 iterations, train convergence "
        f"{result.history[-1].get('convergence')}, ER {effective_rank(contexts):.1f} of {block.context_dim}"
    )
    return contexts


# ----------------------------------------------------------------- runs
def _timed(fn, repeats: int):
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_block(block, token_input, stream, args, warm: Tensor | None) -> None:
    smap = StreamMap(block, token_input, stream, args.batch)
    smap.inputs(torch.arange(1))  # embed the windows once, as every solve on this map would
    n = stream.shape[0]
    t_today, (today_out, today) = _timed(
        lambda: today_solve_contexts_jacobi(block, token_input, stream, args.max_sweeps, args.tol, args.batch), args.repeats
    )
    rows = [
        (
            "today jacobi (c602e35)",
            t_today,
            today["sweeps"],
            today["residual"],
            today["converged"],
            (today["sweeps"] + 1) * n,
            today_out,
        )
    ]
    runs = [("sequential", {}, None), ("jacobi", {"max_iter": args.max_sweeps}, None)]
    if warm is not None:
        runs.append(("jacobi", {"max_iter": args.max_sweeps}, warm))
    runs += [("shooting", {"chunk_size": t}, None) for t in args.chunk_sizes]
    if warm is not None:
        runs.append(("shooting", {}, warm))
    for name, kw, init in runs:
        seconds, (out, st) = _timed(lambda: get_solver(name)(smap, init=init, tol=args.tol, **kw), args.repeats)
        label = name + (f" T={st.chunk_size} K={st.chunks}" if name == "shooting" else "") + (" warm" if init is not None else "")
        if st.sequential_tokens:
            label += f" +{st.sequential_tokens} seq"
        rows.append((label, seconds, st.sweeps, st.residual, st.converged, st.evaluations, out))
    exact = rows[1][-1]
    print(
        f"  {'method':<34} {'seconds':>8} {'sweeps':>6} {'evals/n':>7} {'residual':>9} {'conv':>5} "
        f"{'new/today':>9} {'max|Δ| seq':>10} {'F(C)-C':>8}"
    )
    for label, seconds, sweeps, residual, converged, evaluations, out in rows:
        diff = float((out - exact).abs().max())
        print(
            f"  {label:<34} {seconds:8.3f} {sweeps:6d} {evaluations / n:7.2f} {residual:9.1e} {str(converged):>5} "
            f"{seconds / t_today:9.3f} {diff:10.1e} {fixed_point_residual(smap, out):8.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=84_000)
    parser.add_argument("--stream", choices=["chitchat", "random"], default="chitchat")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--context-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--blocks", nargs="+", choices=["random", "trained"], default=["random", "trained"])
    parser.add_argument("--train-iterations", type=int, default=60, help="Phase 1 iterations at most (default config: 60)")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--max-sweeps", type=int, default=400, help="today's export default")
    parser.add_argument("--batch", type=int, default=4096, help="Jacobi batch (Phase 1 default)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ids = (
        chitchat_stream(args.tokens)
        if args.stream == "chitchat"
        else np.random.default_rng(0).integers(0, VOCAB_SIZE, args.tokens)
    )
    stream = torch.as_tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    token_input = TokenInput(torch.randn(VOCAB_SIZE, args.embed_dim, generator=gen))
    print(
        f"context cache: {stream.shape[0]:,} tokens ({args.stream}), d_e {args.embed_dim}, threads "
        f"{torch.get_num_threads()}, tol {args.tol:g}; ratio = seconds / today's seconds (target <= 0.25)"
    )
    for d_c in args.context_dims:
        for kind in args.blocks:
            torch.manual_seed(0)
            block = ContextBlock(ModelConfig(d_c, token_input.embed_dim, num_input_tokens=token_input.num_input_tokens))
            init_weights(block)
            block.eval()
            print(f"d_c {d_c}, {kind} block")
            warm = train_block(block, token_input, stream, args.train_iterations) if kind == "trained" else None
            bench_block(block, token_input, stream, args, warm)


if __name__ == "__main__":
    main()
