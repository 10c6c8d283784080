"""GPU benchmark: the UltraChat-sized configuration, measured (not a test).

The source study (``config/ultrachat_gpt2.yaml``) has 768-d GPT-2 embeddings,
context_dim 768 / 1200 / 1537, one or two input tokens, and up to ~1M training tokens.
Real UltraChat is not reachable offline, so this runs the embedded chitchat corpus
(tokenised with the packaged GPT-2 BPE) at that token count with random 768-d embeddings
(``newllm.embeddings.random_embeddings``: every one of the 50,257 head rows distinct, as
GPT-2's wte).  Per (context_dim, num_input_tokens) it runs the pipeline's own code:

1. **Phase 1** (``train_phase1``, bf16 sweeps under ``precision: auto``): tokens/s of a
   training iteration (sweep + Adam step + dev sweep), against the same-shape matmuls of
   the block alone in the same precision (forward, and the two of the backward per
   Linear), and the model FLOP rate against the device's bf16 matmul rate measured here
   on an 8192³ product — target ≥ 0.6.  Also at the smallest study size, so the
   projection below can model an iteration as ``a + b·tokens``.
2. **Context cache** (``solve_cache``, multiple shooting as the pipeline): seconds, rounds,
   residual.
3. **Phase 2** (``train_phase2`` at the study's batch; the cache on the device):
   tokens/s of its training steps against (a) its two vocabulary matmuls alone
   ``[B, d_e] @ [d_e, V]`` + ``[B, V] @ [V, d_e]`` in bf16 (target 1's ratio, ≥ 0.8) and
   (b) all its matmuls (TokenBlock + head, forward and backward) and the device bf16 rate
   (≥ 0.6); the same run with the cache left in host memory (a memory map gathered per
   batch, what ``load_context_cache`` does for caches over its in-memory limit).
4. **Memory**: peak ``max_memory_allocated`` of each phase; the Phase 2 batch that docs/method.md §7's
   rule allows (free memory, from ``memory_allocated``, over ``V × 4 B × 3.5`` per row of
   un-fused logits) against the batch the fused tied loss allows (free memory over its
   measured bytes per row).
5. **Projection** of the 30-run UltraChat study (5 sizes × 3 context_dims × 2 input
   windows, one seed, CVFP only) on one GPU: at the step budgets' upper bounds
   (``max_iterations`` 60, ``max_steps`` 20,000, a dev evaluation every 200 steps), plus
   the measured start-up of a job (interpreter, imports, CUDA context) × 4 GPU jobs a run.

    python benchmarks/gpu_study.py --json gpu_study.json           # on a CUDA machine
    python benchmarks/gpu_study.py --device cpu --tokens 20000 --small-tokens 5000 --embed-dim 32 \\
        --context-dims 32 --input-tokens 1 --p2-steps 20 --peak-size 512   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from throughput import _timeit  # benchmarks/ is on sys.path when run as a script

from newllm.context_cache import solve_cache
from newllm.data import build_corpus_cache, load_corpus_cache, load_corpus_dataset, token_stream
from newllm.embeddings import random_embeddings, rescale_rows
from newllm.head import tied_head
from newllm.model import ModelConfig, TokenInput, build_blocks
from newllm.phase1 import Phase1Config, train_phase1
from newllm.phase2 import Phase2Config, Split, accumulate_step, train_phase2
from newllm.runtime import PRECISIONS, resolve_device, resolve_precision, seed_everything
from newllm.tokenizer import VOCAB_SIZE, install_tokenizer_files, load_tokenizer

STUDY_TOKENS = (62_891, 122_795, 240_132, 473_429, 948_524)
"""Training tokens of the source study's five sizes (50 … 800 conversations)."""
GPU_JOBS_PER_RUN = 4
"""phase1, export_contexts, phase1_diagnostics, phase2 (the rules that declare ``gpu``)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device: torch.device) -> float:
    """Mean seconds per call of ``fn`` over 10 calls after 3 warm-up calls."""
    return _timeit(fn, device, repeats=10, warmup=3)


def peak_matmul_flops(device: torch.device, size: int) -> float:
    """FLOP/s of a ``size``³ bf16 matrix product on random data (the device's bf16 rate)."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * size**3 / seconds(lambda: a @ b, device)


def corpus_streams(num_tokens: int, dev_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The embedded chitchat corpus as the pipeline makes it (``cache_corpus``:
    :func:`newllm.data.build_corpus_cache` with the packaged GPT-2 BPE, duplicates dropped;
    :func:`newllm.data.token_stream`: conversations joined by ``<|endoftext|>``): the first
    ``num_tokens`` tokens (train) and the ``dev_tokens`` after them (dev); tiled when the
    corpus is shorter."""
    with tempfile.TemporaryDirectory() as folder:
        install_tokenizer_files("packaged", folder)
        dataset = load_corpus_dataset({"source": "chitchat_dataset"}, folder)
        build_corpus_cache(dataset, load_tokenizer(folder), folder)
        tokens, offsets, _ = load_corpus_cache(folder)
        flat = token_stream(tokens, offsets, range(len(offsets) - 1)).astype(np.int64)
    flat = np.tile(flat, -(-(num_tokens + dev_tokens) // flat.size))
    return flat[:num_tokens], flat[num_tokens : num_tokens + dev_tokens]


def linear_matmul_seconds(block: torch.nn.Module, rows: int, dtype: torch.dtype, device, backward: bool) -> float:
    """Seconds of the block's Linear matmuls alone at ``rows`` rows in ``dtype``: the
    forward ``x @ Wᵀ`` and, with ``backward``, ``g @ W`` and ``gᵀ @ x`` per Linear."""
    mats = []
    for layer in block.modules():
        if isinstance(layer, torch.nn.Linear):
            w = layer.weight.detach().to(dtype)
            x = torch.randn(rows, w.shape[1], device=device, dtype=dtype)
            g = torch.randn(rows, w.shape[0], device=device, dtype=dtype)
            mats.append((w, x, g))

    def run():
        for w, x, g in mats:
            x @ w.t()
            if backward:
                g @ w
                g.t() @ x

    return seconds(run, device)


def linear_flops(block: torch.nn.Module) -> int:
    """Multiply-add FLOPs of one forward row through the block's Linears: ``2 Σ in·out``."""
    return sum(2 * m.in_features * m.out_features for m in block.modules() if isinstance(m, torch.nn.Linear))


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def job_startup_seconds() -> float:
    """Wall seconds of a fresh interpreter that imports the training modules and makes a
    CUDA context (what each pipeline job pays before its work)."""
    code = "import torch, newllm.phase1, newllm.phase2; torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def phase1_measure(block, token_input, stream, dev, args, precision, device) -> dict:
    """A Phase 1 training run of ``args.p1_iterations`` iterations; tokens/s per iteration."""
    cfg = Phase1Config(
        max_iterations=args.p1_iterations,
        min_iterations=args.p1_iterations,
        stop_convergence_rate=1.1,
        batch_size=args.p1_batch,
        er_every=10**6,
    )
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    result = train_phase1(block, token_input, stream, cfg, val_stream=dev, precision=precision)
    sync(device)
    wall = time.perf_counter() - t0
    rates = sorted(r["tokens_per_s"] for r in result.history[1:])
    rate = rates[len(rates) // 2]
    return {
        "tokens": int(stream.shape[0]),
        "iterations": args.p1_iterations,
        "tokens_per_s": rate,
        "seconds_per_iteration": stream.shape[0] / rate,
        "wall_s": wall,
        "peak_bytes": peak_bytes(device),
        "contexts": result.extra["contexts"],
    }


def phase2_measure(block, token_input, train: Split, dev: Split, args, batch, precision, device) -> dict:
    """A Phase 2 run of ``args.p2_steps`` steps with one dev evaluation at the end."""
    cfg = Phase2Config.from_dict(
        {
            "max_steps": args.p2_steps,
            "min_steps": args.p2_steps,
            "eval_every": args.p2_steps,
            "patience": 10**6,
            "batch_size": batch,
        },
        device,
    )
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    result = train_phase2(block, token_input, train, dev, cfg, precision=precision)
    sync(device)
    s = result.summary
    return {
        "batch": batch,
        "chunk_tokens": cfg.chunk_tokens,
        "steps": args.p2_steps,
        "tokens_per_s": s["tokens_per_s"],
        "eval_tokens_per_s": dev.targets / s["eval_seconds"] if s["eval_seconds"] else None,
        "wall_s": time.perf_counter() - t0,
        "peak_bytes": peak_bytes(device),
    }


def fused_bytes_per_row(block, token_input, split: Split, precision, device) -> float:
    """Bytes of peak device memory per row of a Phase 2 batch (forward + fused loss +
    backward) beyond the one ``[chunk, V]`` logits block, from the peaks at one and at
    four chunks of rows."""
    if device.type != "cuda":
        return float("nan")
    head = tied_head(token_input.weight, precision)
    chunk = Phase2Config.from_dict({}, device).chunk_tokens
    batches, peaks = (chunk, 4 * chunk), []
    for b in batches:
        pos = torch.randint(0, split.targets, (b,), device=device)
        block.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        accumulate_step(block, token_input, split, pos, b, chunk, precision, head)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    block.zero_grad(set_to_none=True)
    return (peaks[1] - peaks[0]) / (batches[1] - batches[0])


def one_config(d_c, n_in, E, stream, dev, small, args, precision, device) -> dict:
    """Phase 1, cache, Phase 2 and their matmul limits for one (context_dim, num_input_tokens)."""
    dtype = PRECISIONS[precision]
    token_input = TokenInput(E, n_in).to(device)
    model = {"context_dim": d_c, "num_input_tokens": n_in, "num_layers": 1, "ffn_layers": 1, "activation": "relu"}
    torch.manual_seed(0)
    context_block, token_block = build_blocks(ModelConfig.from_dict(model, E.shape[1]))
    context_block, token_block = context_block.to(device), token_block.to(device)
    out = {"context_dim": d_c, "num_input_tokens": n_in}

    # --- Phase 1 at the small and the large size (a fresh block each, same init)
    init = {k: v.clone() for k, v in context_block.state_dict().items()}
    p1_small = phase1_measure(context_block, token_input, small, dev, args, precision, device)
    context_block.load_state_dict(init)
    p1 = phase1_measure(context_block, token_input, stream, dev, args, precision, device)
    B = args.p1_batch
    per_token_flops = linear_flops(context_block)
    # one iteration: training sweep (forward + backward) over n, dev sweep (forward, fp32) over m
    n, m = stream.shape[0], dev.shape[0]
    t_train = linear_matmul_seconds(context_block, B, dtype, device, backward=True) * n / B
    t_dev = linear_matmul_seconds(context_block, B, torch.float32, device, backward=False) * m / B
    p1["matmul_limit_tokens_per_s"] = n / (t_train + t_dev)
    p1["ratio_to_matmuls"] = p1["tokens_per_s"] / p1["matmul_limit_tokens_per_s"]
    p1["model_flops_per_s"] = p1["tokens_per_s"] * (3 * per_token_flops + per_token_flops * m / n)
    small_rate = p1_small["tokens_per_s"]
    p1["small"] = {"tokens": int(small.shape[0]), "tokens_per_s": small_rate}
    p1.pop("contexts")
    p1_small.pop("contexts")

    # --- the context cache, as export_contexts solves it (warm start not used there)
    context_block.eval()
    sync(device)
    t0 = time.perf_counter()
    cache, info = solve_cache(context_block, token_input, stream, "shooting", 400, 1e-5, args.p1_batch)
    sync(device)
    cache_s = time.perf_counter() - t0
    dev_cache, _ = solve_cache(context_block, token_input, dev, "shooting", 400, 1e-5, args.p1_batch)
    out["cache"] = {
        "seconds": cache_s,
        "tokens_per_s": n / cache_s,
        "method": info["method"],
        "sweeps": info["sweeps"],
        "residual": info["residual"],
        "bytes": cache.numel() * 4,
    }
    out["phase1"] = p1

    # --- Phase 2 with the cache on the device, at the study's batch and a larger one
    train, dev_split = Split(stream, cache), Split(dev, dev_cache)
    head = tied_head(token_input.weight, precision)  # as train_phase2 makes it: rows padded on CUDA
    head_rows = head.rows.shape[0]
    p2 = []
    tb_init = {k: v.clone() for k, v in token_block.state_dict().items()}
    for batch in args.p2_batches:
        token_block.load_state_dict(tb_init)
        r = phase2_measure(token_block, token_input, train, dev_split, args, batch, precision, device)
        h = torch.randn(batch, E.shape[1], device=device, dtype=dtype)
        g = torch.randn(batch, head_rows, device=device, dtype=dtype)
        W = head.rows.to(dtype)
        vocab = seconds(lambda: (h @ W.t(), g @ W), device)
        blockmm = linear_matmul_seconds(token_block, batch, dtype, device, backward=True)
        r["vocab_matmul_limit_tokens_per_s"] = batch / vocab
        r["ratio_to_vocab_matmuls"] = r["tokens_per_s"] / r["vocab_matmul_limit_tokens_per_s"]
        r["all_matmul_limit_tokens_per_s"] = batch / (vocab + blockmm)
        r["ratio_to_all_matmuls"] = r["tokens_per_s"] / r["all_matmul_limit_tokens_per_s"]
        r["model_flops_per_s"] = r["tokens_per_s"] * (3 * linear_flops(token_block) + 4 * E.shape[1] * (head_rows - head.pad))
        p2.append(r)
    # the same at the study's batch with the cache left in host memory (a memory map)
    if device.type == "cuda" and args.host_cache:
        path = Path(args.scratch) / f"cache_{d_c}_{n_in}.npy"
        np.save(path, cache.cpu().numpy())
        token_block.load_state_dict(tb_init)
        mapped = Split(stream, np.load(path, mmap_mode="c"))
        r = phase2_measure(token_block, token_input, mapped, dev_split, args, args.p2_batches[0], precision, device)
        p2[0]["host_cache_tokens_per_s"] = r["tokens_per_s"]
        path.unlink()
    out["phase2"] = p2
    out["head_rows"] = head_rows
    out["fused_bytes_per_row"] = fused_bytes_per_row(token_block, token_input, train, precision, device)
    if device.type == "cuda":
        free = torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)
        out["free_bytes"] = int(free)
        out["spec7_batch"] = int(free / (VOCAB_SIZE * 4 * 3.5))
        out["fused_batch"] = int(free / out["fused_bytes_per_row"])
    del cache, dev_cache, train, dev_split
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def projection(results: list[dict], args, startup: float, epochs: float | None = None) -> dict:
    """Seconds of the 30-run study on one GPU at the budgets' upper bounds (see module
    doc); with ``epochs``, Phase 2 stops after that many epochs if sooner."""
    total = {"phase1": 0.0, "cache": 0.0, "phase2": 0.0, "dev_eval": 0.0, "startup": 0.0}
    for r in results:
        p1 = r["phase1"]
        # an iteration as a + b·tokens through the two measured sizes
        t_small = p1["small"]["tokens"] / p1["small"]["tokens_per_s"]
        t_large = p1["tokens"] / p1["tokens_per_s"]
        b = (t_large - t_small) / (p1["tokens"] - p1["small"]["tokens"])
        a = max(0.0, t_small - b * p1["small"]["tokens"])
        p2 = r["phase2"][0]
        for tokens in STUDY_TOKENS:
            total["phase1"] += args.max_iterations * (a + b * tokens)
            total["cache"] += tokens / r["cache"]["tokens_per_s"] * (1 + args.study_dev_tokens / tokens)
            steps = args.max_steps if epochs is None else min(args.max_steps, math.ceil(epochs * tokens / p2["batch"]))
            total["phase2"] += steps * p2["batch"] / p2["tokens_per_s"]
            total["dev_eval"] += steps // args.eval_every * args.study_dev_tokens / p2["eval_tokens_per_s"]
            total["startup"] += GPU_JOBS_PER_RUN * startup
    runs = len(results) * len(STUDY_TOKENS)
    scale = 30 / max(runs, 1)  # a run subset measured (e.g. one context_dim): scale to the 30 runs
    total = {k: v * scale for k, v in total.items()}
    total["runs_measured"] = runs
    total["total_s"] = sum(v for k, v in total.items() if k != "runs_measured")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--context-dims", type=int, nargs="+", default=[768, 1200, 1537])
    parser.add_argument("--input-tokens", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=STUDY_TOKENS[-1], help="training tokens (the largest size)")
    parser.add_argument("--small-tokens", type=int, default=STUDY_TOKENS[0])
    parser.add_argument("--dev-tokens", type=int, default=25_000)
    parser.add_argument("--study-dev-tokens", type=int, default=120_000, help="dev tokens of the projected study")
    parser.add_argument("--p1-batch", type=int, default=8192, help="config/ultrachat_gpt2.yaml's phase1.batch_size")
    parser.add_argument("--p1-iterations", type=int, default=4)
    parser.add_argument("--p2-batches", type=int, nargs="+", default=[1024, 8192], help="first = the study's")
    parser.add_argument("--p2-steps", type=int, default=300)
    parser.add_argument("--max-iterations", type=int, default=60)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--host-cache", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--scratch", default="/tmp")
    parser.add_argument("--json", default=None, help="write every measurement here")
    args = parser.parse_args()
    if not 0 < args.small_tokens < args.tokens:  # the projection fits an iteration through both sizes
        parser.error(f"--small-tokens must be in 1..--tokens - 1 = {args.tokens - 1}, got {args.small_tokens}")

    seed_everything(0)  # as every rule script: deterministic kernels
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device, args.embed_dim)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_matmul_flops(device, args.peak_size)
    startup = job_startup_seconds()
    train_np, dev_np = corpus_streams(args.tokens, args.dev_tokens)
    stream, dev = torch.from_numpy(train_np).to(device), torch.from_numpy(dev_np).to(device)
    small = stream[: args.small_tokens]
    E = torch.from_numpy(rescale_rows(random_embeddings(args.embed_dim, 0), 1.0)).to(device)
    print(
        f"{name}, torch {torch.__version__}, precision {precision}; bf16 {args.peak_size}^3 matmul: {peak / 1e12:,.1f} "
        f"TFLOP/s; job start-up {startup:.1f} s; {stream.shape[0]:,} train + {dev.shape[0]:,} dev tokens, d_e "
        f"{args.embed_dim}",
        flush=True,
    )
    results = []
    for d_c in args.context_dims:
        for n_in in args.input_tokens:
            try:
                r = one_config(d_c, n_in, E, stream, dev, small, args, precision, device)
            except Exception:  # noqa: BLE001 - a benchmark on a leased GPU: report and go on
                traceback.print_exc()
                continue
            results.append(r)
            p1, c, p2 = r["phase1"], r["cache"], r["phase2"]
            print(
                f"d_c {d_c}, {n_in} input token(s): Phase 1 {p1['tokens_per_s'] / 1e6:.2f}M tok/s (at "
                f"{p1['small']['tokens']:,} tokens {p1['small']['tokens_per_s'] / 1e6:.2f}M) = "
                f"{p1['ratio_to_matmuls']:.2f} of its matmuls alone, {p1['model_flops_per_s'] / peak:.3f} of the bf16 "
                f"rate, peak {p1['peak_bytes'] / 2**30:.2f} GiB; cache {c['seconds']:.2f} s ({c['sweeps']} rounds, "
                f"residual {c['residual']:.1e}, {c['bytes'] / 2**30:.2f} GiB)",
                flush=True,
            )
            for q in p2:
                host = q.get("host_cache_tokens_per_s")
                host = f", cache in host memory {host / 1e6:.2f}M" if host else ""
                print(
                    f"    Phase 2 batch {q['batch']} (chunk {q['chunk_tokens']}): {q['tokens_per_s'] / 1e6:.2f}M tok/s "
                    f"= {q['ratio_to_vocab_matmuls']:.2f} of its two vocabulary matmuls, {q['ratio_to_all_matmuls']:.2f} "
                    f"of all its matmuls, {q['model_flops_per_s'] / peak:.3f} of the bf16 rate; peak "
                    f"{q['peak_bytes'] / 2**30:.2f} GiB; dev eval {q['eval_tokens_per_s'] / 1e6:.2f}M tok/s{host}",
                    flush=True,
                )
            if "spec7_batch" in r:
                print(
                    f"    free {r['free_bytes'] / 2**30:.1f} GiB: method §7 batch {r['spec7_batch']:,} (V x 4 B x 3.5 per "
                    f"row); fused loss {r['fused_bytes_per_row'] / 2**10:.1f} KiB per row -> batch {r['fused_batch']:,}",
                    flush=True,
                )
    proj = projection(results, args, startup)
    by_epochs = projection(results, args, startup, epochs=20)
    for what, p in (
        (f"max_steps {args.max_steps}", proj),
        ("Phase 2 at most 20 epochs (docs/method.md §7's source budget)", by_epochs),
    ):
        print(
            f"projected 30-run study (max_iterations {args.max_iterations}, {what}, dev eval every "
            f"{args.eval_every} on {args.study_dev_tokens:,} tokens, {GPU_JOBS_PER_RUN} jobs a run; from "
            f"{p['runs_measured']} runs' rates): {p['total_s'] / 60:.1f} min = "
            + ", ".join(f"{k} {v / 60:.1f}" for k, v in p.items() if k not in ("total_s", "runs_measured"))
            + " (target <= 15 min)"
        )
    if args.json:
        meta = {"device": name, "torch": torch.__version__, "precision": precision, "bf16_flops": peak, "startup_s": startup}
        out = {"meta": meta, "configs": results, "projection": proj, "projection_20_epochs": by_epochs}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
