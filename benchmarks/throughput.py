"""Throughput benchmark: the issue-10 targets as ratios measured in one run (not a test).

Prints, on one machine in one process, on one thread unless ``--threads`` says otherwise
(the pipeline's training jobs run one thread each, side by side):
  1. Phase 2 inside the trainer (``train_phase2``: batches gathered from a cache, fused
     tied cross-entropy, clip, Adam, dev evaluation) against the rate of its two
     same-shape vocabulary matmuls alone (``[B, d_e] @ [d_e, V]`` for the logits and
     ``[B, V] @ [V, d_e]`` for ∂L/∂h, into preallocated outputs) — target ≥ 0.8 — with
     and without the dev evaluations it interleaves; the matmuls are timed before each of
     3 trainer runs and after the last, and the best of those limits is the reference;
  2. a Phase 1 training iteration of ``train_phase1`` against the implementation of
     commit c602e35 ("today" in the issue: LayerNorm of the embeddings in every batch, a
     host sync per batch, Effective Rank every iteration) — target ≥ 1.5×;
  3. the reference ``F.cross_entropy(h @ Eᵀ)`` step the fused loss replaces;
  4. with ``--precision``: the bf16/fp32 rate ratio of a Phase 2 training step
     (:func:`newllm.phase2.accumulate_step` + Adam, the TokenBlock under autocast, the
     head's matmuls on a bf16 copy of E) and of its two vocabulary matmuls alone, at the
     run's d_e and at d 256 and 768 (d_c = d_e there), with the relative gap of the two
     precisions' loss on the same first batch — what ``precision: auto`` is chosen from.
The context-cache target (3) is printed by ``benchmarks/context_cache.py``.

    python benchmarks/throughput.py                         # CPU, the default study's shapes
    python benchmarks/throughput.py --precision             # ... plus the bf16/fp32 ratios
    python benchmarks/throughput.py --threads 2             # one job given both of 2 cores
    python benchmarks/throughput.py --device cuda --embed-dim 768 --context-dim 768 --batch 8192
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from newllm.head import TiedCrossEntropy, _max_shifted_chunk, _sample_shifted_chunk, tied_head
from newllm.losses import phase1_loss
from newllm.metrics import convergence_counts, effective_rank
from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, init_weights
from newllm.phase1 import Phase1Config, train_phase1
from newllm.phase2 import Phase2Config, Split, accumulate_step, train_phase2
from newllm.runtime import PRECISIONS, keep_freed_memory, resolve_device, resolve_precision
from newllm.tokenizer import VOCAB_SIZE


def _timeit(fn, device, repeats, rounds=1, warmup=1):
    """Seconds per call of ``fn``: the mean over ``repeats`` calls after ``warmup`` calls,
    the best of ``rounds`` such means (``timeit.repeat``'s rule: the least disturbed
    round, for a limit)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def c602e35_iteration(block, weight, stream, contexts, cfg, optimizer):
    """One Phase 1 iteration as implemented at c602e35: LayerNorm'd embeddings gathered
    per batch, a ``.item()`` host sync per batch, Effective Rank every iteration."""
    n = stream.shape[0]
    optimizer.zero_grad(set_to_none=True)
    new = torch.empty_like(contexts)
    sums = torch.zeros(3, dtype=torch.float64)
    for start in range(0, n, cfg.batch_size):
        pos = torch.arange(start, min(start + cfg.batch_size, n), device=stream.device)
        prev = contexts[(pos - 1).clamp(min=0)] * (pos > 0).unsqueeze(-1).float()
        x = F.layer_norm(weight[stream[pos]], (weight.shape[1],))
        out = block(prev, x)[:, -1]
        total, cvfp, div = phase1_loss(out, contexts[pos], cfg.dist_reg_weight, cfg.diversity)
        (total * pos.shape[0] / n).backward()
        sums += torch.tensor([total.item(), cvfp.item(), div.item()], dtype=torch.float64) * pos.shape[0] / n
        new[pos] = out.detach()
    torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip)
    optimizer.step()
    convergence_counts(new, contexts, cfg.convergence_threshold)
    effective_rank(new, cfg.er_max_rows, 0)
    return new


def precision_step_seconds(d_e: int, d_c: int, B: int, chunk: int, precision: str, device, repeats: int):
    """Seconds per Phase 2 training step (forward, fused tied CE, backward, Adam) and per
    pair of vocabulary matmuls ``[B, d_e] @ [d_e, V]`` + ``[B, V] @ [V, d_e]`` in
    ``precision``, and the step's loss (nats, float32) for a cross-check."""
    torch.manual_seed(0)
    n, V = 8192, VOCAB_SIZE
    E = (torch.randn(V, d_e) / d_e**0.5).to(device)
    token_input = TokenInput(E).to(device)
    head = tied_head(token_input.weight, precision)  # once per run, as train_phase2 does
    block = TokenBlock(ModelConfig(d_c, d_e)).to(device)
    init_weights(block)
    split = Split(torch.randint(0, V, (n,), device=device), torch.randn(n, 1, d_c, device=device))
    pos = torch.randint(0, n - 1, (B,), device=device)
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        losses.append(accumulate_step(block, token_input, split, pos, B, chunk, precision, head))
        opt.step()

    rows = head.rows  # [V, d_e]: random rows are all distinct (padded to a multiple of 64 on CUDA)
    h = torch.randn(B, d_e, device=device).to(rows.dtype)
    g = torch.randn(B, rows.shape[0], device=device).to(rows.dtype)
    matmuls = _timeit(lambda: (h @ rows.t(), g @ rows), device, repeats)
    return _timeit(step, device, repeats), matmuls, float(losses[0])


def precision_comparison(d_e: int, d_c: int, B: int, chunk: int, device, repeats: int) -> None:
    """Print the bf16/fp32 rate ratios of a Phase 2 step and of its two vocabulary matmuls
    at the run's ``d_e`` and at 256 and 768, and what ``precision: auto`` picks there."""
    for d, dc in dict.fromkeys([(d_e, d_c), (256, 256), (768, 768)]):
        reps = max(3, repeats // (4 if d >= 768 else 1))
        s32, m32, loss32 = precision_step_seconds(d, dc, B, chunk, "fp32", device, reps)
        s16, m16, loss16 = precision_step_seconds(d, dc, B, chunk, "bf16", device, reps)
        print(
            f"[target 4] d_e {d}, d_c {dc}, batch {B}: Phase 2 step bf16/fp32 rate {s32 / s16:.2f}x "
            f"({B / s32:,.0f} vs {B / s16:,.0f} tok/s); two vocabulary matmuls {m32 / m16:.2f}x; first-step loss "
            f"gap {abs(loss16 / loss32 - 1):.1e}; precision auto -> {resolve_precision('auto', device, d)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--context-dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=84_000, help="training stream length (the old largest default size)")
    parser.add_argument("--dev-tokens", type=int, default=12_500)
    parser.add_argument("--batch", type=int, default=256, help="Phase 2 tokens per step (the default study's)")
    parser.add_argument(
        "--distinct-rows",
        type=int,
        default=16_898,
        help="embedding rows that differ; the others share one row, as the default study's bigram stand-in "
        "(16,898 distinct of 50,257); 0 = all distinct (GPT-2-like)",
    )
    parser.add_argument("--steps", type=int, default=300, help="Phase 2 optimizer steps timed")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=None, help="fused CE chunk (default: the config resolution's)")
    parser.add_argument("--iterations", type=int, default=6, help="Phase 1 iterations timed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: a training job's, rules/common.smk TRAINING_THREADS; 0: torch's default)",
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--precision", action="store_true", help="also print the bf16/fp32 ratios (target 4)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    heap = keep_freed_memory()  # as every pipeline job (seed_everything); both implementations below run with it
    device = resolve_device(args.device)
    torch.manual_seed(0)
    d_e, d_c, V, B = args.embed_dim, args.context_dim, VOCAB_SIZE, args.batch
    E = torch.randn(V, d_e) / d_e**0.5
    if 0 < args.distinct_rows < V:
        E[args.distinct_rows :] = E[args.distinct_rows]  # one shared row, merged exactly by tied_head
    E = E.to(device)
    run_precision = resolve_precision("auto", device, d_e)  # what a pipeline run uses here: fp32 on CPU, bf16 on CUDA
    dtype = PRECISIONS[run_precision]
    head_rows = tied_head(E, run_precision).rows  # merged, and padded to a multiple of 64 on CUDA
    C = head_rows.shape[0]
    token_input = TokenInput(E).to(device)
    stream = torch.randint(0, V, (args.tokens,), device=device)
    dev = torch.randint(0, V, (args.dev_tokens,), device=device)
    cfg2 = Phase2Config.from_dict({"chunk_tokens": args.chunk, "batch_size": B}, device)
    print(
        f"device {device}, threads {torch.get_num_threads()}, d_e {d_e}, d_c {d_c}, V {V} ({C} distinct head rows), "
        f"Phase 2 batch {B}, chunk {cfg2.chunk_tokens}, precision {run_precision}, "
        + (f"freed memory kept below {heap / 2**20:,.0f} MiB" if heap else "freed memory returned (no glibc)")
    )

    # --- the two vocabulary matmuls of a training step, alone, at the full vocabulary (the
    # issue's reference) and at the merged head's row count (what the trainer multiplies),
    # into preallocated outputs; a limit, so the best of 5 rounds. On a shared machine one
    # such measurement alone varied 20-35k tok/s between processes while the trainer held
    # 21-23k, so it is taken before every trainer run and after the last, and the trainer
    # is compared with the best of them (the range is printed)
    operands = {}
    for rows in dict.fromkeys([V, C]):
        W = (head_rows if rows == C else E[:rows]).to(dtype).contiguous()
        h, g = torch.randn(B, d_e, device=device, dtype=dtype), torch.randn(B, rows, device=device, dtype=dtype)
        outputs = torch.empty(B, rows, device=device, dtype=dtype), torch.empty(B, d_e, device=device, dtype=dtype)
        operands[rows] = (W, h, g, *outputs)
    limits: dict[int, list[float]] = {rows: [] for rows in operands}

    def measure_limits() -> None:
        for rows, (W, h, g, logits, grad) in operands.items():
            two = _timeit(lambda: (torch.mm(h, W.t(), out=logits), torch.mm(g, W, out=grad)), device, args.repeats, rounds=5)
            limits[rows].append(B / two)

    # --- 1. Phase 2 in the trainer, gathering from a cache, with and without dev evaluation;
    # the best of 3 runs, each after a measurement of the limits
    cache, dev_cache = torch.randn(args.tokens, 1, d_c, device=device), torch.randn(args.dev_tokens, 1, d_c, device=device)
    cfg = Phase2Config(
        max_steps=args.steps,
        min_steps=args.steps,
        eval_every=args.eval_every,
        patience=10**6,
        batch_size=B,
        chunk_tokens=cfg2.chunk_tokens,
    )
    train_rate = overall = 0.0
    for _ in range(3):
        measure_limits()
        torch.manual_seed(0)
        block = TokenBlock(ModelConfig(d_c, d_e)).to(device)
        init_weights(block)
        t0 = time.perf_counter()
        result = train_phase2(block, token_input, Split(stream, cache), Split(dev, dev_cache), cfg, precision=run_precision)
        wall = time.perf_counter() - t0
        train_rate, overall = max(train_rate, result.summary["tokens_per_s"]), max(overall, args.steps * B / wall)
    measure_limits()
    for rows, rates in limits.items():
        print(
            f"two-matmul limit [{B}x{d_e}]@[{d_e}x{rows}] + [{B}x{rows}]@[{rows}x{d_e}]: best {max(rates):,.0f} tok/s "
            f"({4 * d_e * rows * max(rates) / 1e9:.1f} GFLOP/s); {len(rates)} measurements, "
            f"{min(rates):,.0f}-{max(rates):,.0f}"
        )
    limit, own = max(limits[V]), max(limits[C])
    print(
        f"[target 1] Phase 2 in train_phase2 (best of 3 runs): {train_rate:,.0f} tok/s training steps = "
        f"{train_rate / limit:.2f} of the full-vocabulary two-matmul limit (target >= 0.8), {train_rate / own:.2f} "
        f"of its own head rows' (merged; padded on CUDA); with dev evaluation every {args.eval_every} steps on "
        f"{args.dev_tokens} tokens: {overall:,.0f} tok/s = {overall / limit:.2f} / {overall / own:.2f}"
    )

    pos = torch.randint(0, args.tokens - 1, (B,), device=device)
    y = stream[pos + 1]
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)

    def reference_step():
        loss = F.cross_entropy(block(cache[pos], token_input(stream, pos)) @ E.t(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    head = tied_head(E)

    def fused_step():
        loss = TiedCrossEntropy.apply(block(cache[pos], token_input(stream, pos)), head, y, cfg2.chunk_tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ref, fused = _timeit(reference_step, device, args.repeats), _timeit(fused_step, device, args.repeats)
    print(
        f"reference step (F.cross_entropy on full logits): {B / ref:,.0f} tok/s; fused step on the merged head alone "
        f"{B / fused:,.0f} tok/s "
        f"({ref / fused:.2f}x)"
    )

    # the loss of one chunk: the softmax shift from a sample of rows folded into the matmul
    # (what float32 rows use) against the row maximum (bf16 rows, and the fallback)
    h = block(cache[pos], token_input(stream, pos)).detach()[: cfg2.chunk_tokens]
    ys = head.classes(y[: cfg2.chunk_tokens])
    sample = _timeit(lambda: _sample_shifted_chunk(h, head, ys), device, args.repeats * 5, rounds=5)
    rowmax = _timeit(lambda: _max_shifted_chunk(h, head, ys), device, args.repeats * 5, rounds=5)
    # ... and the same chunk's two vocabulary matmuls alone (the [c, d_e + 2] operand of the
    # folded shift): what the passes over the [c, C] logits (exp, sum) and the shift add
    h_aug = torch.randn(h.shape[0], head.shifted_rows_t.shape[0], device=device, dtype=head.rows.dtype)
    e, rows_c = torch.empty(h.shape[0], head.shifted_rows_t.shape[1], device=device, dtype=head.rows.dtype), head.rows
    grad_c = torch.empty(h.shape[0], rows_c.shape[1], device=device, dtype=rows_c.dtype)
    matmuls = _timeit(
        lambda: (torch.mm(h_aug, head.shifted_rows_t, out=e), torch.mm(e, rows_c, out=grad_c)), device, args.repeats * 5, rounds=5
    )
    print(
        f"loss of one {h.shape[0]}-row chunk (two matmuls + softmax): sample shift {sample * 1e6:,.0f} us vs row-maximum "
        f"shift {rowmax * 1e6:,.0f} us = {rowmax / sample:.2f}x; its two matmuls alone {matmuls * 1e6:,.0f} us = "
        f"{matmuls / sample:.2f} of the sample-shift loss (best of 5 rounds each)"
    )

    # --- 2. Phase 1 iteration: train_phase1 vs the c602e35 implementation, same shapes
    cfg1 = Phase1Config(max_iterations=args.iterations, min_iterations=args.iterations, stop_convergence_rate=1.1)
    torch.manual_seed(0)
    new_block = ContextBlock(ModelConfig(d_c, d_e)).to(device)
    init_weights(new_block)
    old_block = ContextBlock(ModelConfig(d_c, d_e)).to(device)
    old_block.load_state_dict(new_block.state_dict())
    result = train_phase1(new_block, token_input, stream, cfg1, val_stream=dev)
    new_rate = sorted(r["tokens_per_s"] for r in result.history[1:])[len(result.history[1:]) // 2]
    optimizer = torch.optim.Adam(old_block.parameters(), lr=cfg1.learning_rate)
    contexts = 0.01 * torch.randn(args.tokens, d_c, device=device)
    dev_contexts = 0.01 * torch.randn(args.dev_tokens, d_c, device=device)
    times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        contexts = c602e35_iteration(old_block, E, stream, contexts, cfg1, optimizer)
        with torch.no_grad():  # c602e35 swept the validation stream per iteration too, with its ER
            for start in range(0, args.dev_tokens, cfg1.batch_size):
                p = torch.arange(start, min(start + cfg1.batch_size, args.dev_tokens), device=device)
                prev = dev_contexts[(p - 1).clamp(min=0)] * (p > 0).unsqueeze(-1).float()
                dev_contexts[p] = old_block(prev, F.layer_norm(E[dev[p]], (d_e,)))[:, -1]
            effective_rank(dev_contexts, cfg1.er_max_rows, 0)
        times.append(time.perf_counter() - t0)
    old_rate = args.tokens / sorted(times[1:])[len(times[1:]) // 2]
    print(
        f"[target 2] Phase 1 iteration ({args.tokens} tokens + {args.dev_tokens} dev, batch {cfg1.batch_size}): "
        f"{new_rate:,.0f} tok/s vs {old_rate:,.0f} tok/s at c602e35 = {new_rate / old_rate:.2f}x (target >= 1.5)"
    )

    # --- 4. bf16 against fp32 at the run's d_e and at 256 and 768
    if args.precision:
        precision_comparison(d_e, d_c, B, cfg2.chunk_tokens, device, args.repeats)


if __name__ == "__main__":
    main()
