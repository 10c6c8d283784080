"""Throughput benchmark: Phase 1 sweep and Phase 2 step next to plain torch matmuls.

Prints tokens/s for
  - a Phase 1 training sweep (forward + backward of the ContextBlock over a stream),
  - a Phase 2 training step (TokenBlock + fused tied-head cross-entropy + Adam),
  - the reference `F.cross_entropy(h @ Eᵀ)` step it replaces,
  - a plain `[B, d_e] @ [d_e, V]` matmul (the hardware limit for the vocabulary projection),
so the ratio to the machine's matrix-multiply speed is visible.  Not a test: it
asserts nothing and only prints figures.

    python benchmarks/throughput.py                         # CPU defaults (config/config.yaml sizes)
    python benchmarks/throughput.py --device cuda --embed-dim 768 --context-dim 768 --batch 8192
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from newllm.model import ContextBlock, TokenBlock, TokenInput, init_weights
from newllm.phase1 import Phase1Config, train_phase1
from newllm.phase2 import TiedCrossEntropy
from newllm.runtime import resolve_device
from newllm.tokenizer import VOCAB_SIZE


def _timeit(fn, device, repeats):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--context-dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=100_000, help="Phase 1 stream length")
    parser.add_argument("--batch", type=int, default=128, help="Phase 2 tokens per step")
    parser.add_argument("--chunk", type=int, default=None, help="fused CE chunk (default 32 CPU / 4096 CUDA)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    chunk = args.chunk or (4096 if device.type == "cuda" else 32)
    torch.manual_seed(0)
    d_e, d_c, V = args.embed_dim, args.context_dim, VOCAB_SIZE
    E = (torch.randn(V, d_e) / d_e**0.5).to(device)
    token_input = TokenInput(E).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, d_e {d_e}, d_c {d_c}, V {V}")

    ctx = ContextBlock(d_c, d_e).to(device)
    init_weights(ctx)
    stream = torch.randint(0, V, (args.tokens,), device=device)
    cfg = Phase1Config(max_iterations=4, min_iterations=4, stop_convergence_rate=1.0)
    result = train_phase1(ctx, token_input, stream, cfg)
    sweep = sorted(r["tokens_per_s"] for r in result.history[1:])[len(result.history[1:]) // 2]
    flops_p1 = 3 * 2 * (d_c + d_e) * d_c  # fwd + bwd of the FFN Linear, per token
    print(f"Phase 1 sweep (fwd+bwd, {args.tokens} tokens, batch {cfg.batch_size}): {sweep:,.0f} tok/s  (~{sweep * flops_p1 / 1e9:.1f} GFLOP/s in the FFN)")

    block = TokenBlock(d_c, d_e, d_e).to(device)
    init_weights(block)
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)
    B = args.batch
    pos = torch.randint(1, args.tokens - 1, (B,), device=device)
    contexts = torch.randn(B, 1, d_c, device=device)
    y = stream[pos + 1]

    def phase2_step():
        loss = TiedCrossEntropy.apply(block(contexts, token_input(stream, pos)), E, y, chunk)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(block.parameters(), 1.0)
        opt.step()

    def reference_step():
        loss = F.cross_entropy(block(contexts, token_input(stream, pos)) @ E.t(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    h = torch.randn(B, d_e, device=device)
    matmul = _timeit(lambda: h @ E.t(), device, args.repeats)
    chunked = _timeit(lambda: [h[s : s + chunk] @ E.t() for s in range(0, B, chunk)], device, args.repeats)
    step = _timeit(phase2_step, device, args.repeats)
    ref = _timeit(reference_step, device, args.repeats)
    flop = 2 * B * d_e * V
    print(f"plain matmul [{B}x{d_e}]@[{d_e}x{V}]: {B / matmul:,.0f} tok/s ({flop / matmul / 1e9:.1f} GFLOP/s); "
          f"in {chunk}-row chunks: {B / chunked:,.0f} tok/s ({flop / chunked / 1e9:.1f} GFLOP/s)")
    # a training step needs two projections of this size: logits (h Eᵀ) and dL/dh (G E)
    limit = B / min(matmul, chunked) / 2
    print(f"Phase 2 step (fused tied CE, chunk {chunk}): {B / step:,.0f} tok/s = {100 * (B / step) / limit:.0f} % of the two-matmul limit ({limit:,.0f} tok/s)")
    print(f"reference step (F.cross_entropy on full logits): {B / ref:,.0f} tok/s; fused speed-up {ref / step:.2f}x")


if __name__ == "__main__":
    main()
