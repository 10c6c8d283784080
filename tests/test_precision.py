"""``precision: fp32 | bf16 | auto``.

Tolerance.  bf16 keeps 8 significant bits: rounding the operands ``h`` and ``E`` of a
logit ``z = h·E_v`` changes it by at most ``2·2⁻⁹·Σ_k |h_k E_vk|`` and rounding the
matmul's output by ``2⁻⁹·|z|`` (the target logit is recomputed exactly, so only the
competitors' rounding enters the log-sum-exp, as ``Σ_v p_v ε_v``).  With random signs
these errors average out over the vocabulary and the tokens.  Measured here (2-core
AVX512-BF16 CPU), bf16 against fp32:

- the same weights scored in both: dev PPL 0.007 % apart for the TokenBlock (only the
  head's matmuls and the block's Linears are bf16), 0.06–0.08 % for the LSTM and
  Transformer (the whole recurrence / attention under autocast);
- after training in each precision (the rounding enters every step, so trajectories
  part): 0.03 % for a tiny-study-sized Phase 2 run (d_e 16, V = 50,257, batch 128),
  0.1 % for the LSTM and Transformer, 0.02 % in Phase 1's final CVFP loss.

The stated tolerances: **1 % in dev PPL after training** (0.01 nats, ≥ 8x the measured
gaps) and 0.5 % for the same weights.
"""

import math

import jsonschema
import pytest
import torch
import torch.nn.functional as F

from newllm.baselines.models import LSTMLM, TransformerConfig, TransformerLM
from newllm.baselines.training import NeuralTrainConfig, evaluate_stream, train_neural_lm
from newllm.head import TiedCrossEntropy, tied_head, tied_token_nll
from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, init_weights
from newllm.phase1 import Phase1Config, train_phase1
from newllm.phase2 import Phase2Config, Split, evaluate, train_phase2
from newllm.pipeline import run_precision
from newllm.runtime import autocast, resolve_precision
from newllm.tokenizer import VOCAB_SIZE

PPL_TOLERANCE = 0.01
"""bf16 vs fp32 dev PPL after the same training run, relative (module docstring)."""
EVAL_TOLERANCE = 5e-3
"""bf16 vs fp32 PPL of the same weights, relative."""


@pytest.fixture(scope="module")
def schema(repo):
    import yaml

    return yaml.safe_load((repo / "config" / "schema.yaml").read_text())


def test_config_accepts_the_precisions_and_rejects_others(schema):
    prop = schema["properties"]["precision"]
    assert prop["default"] == "auto" and prop["description"]
    for value in ("auto", "fp32", "bf16"):
        jsonschema.validate(value, prop)
    for value in ("fp16", "float32", "BF16", 16):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, prop)
    with pytest.raises(ValueError, match="'fp16' is not one of auto, fp32, bf16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_auto_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("mps"), 768) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    for d_e in (16, 64, 256, 768):  # the bf16 step measured slower than fp32 on the CPU at every width
        assert resolve_precision("auto", cpu, d_e) == "fp32"
    assert run_precision({}, cpu, 16) == "fp32"  # params without the key: auto
    assert run_precision({"precision": "bf16"}, cpu, 16) == "bf16"


def test_fp32_enters_no_autocast_region():
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _reference_bf16_logits(h, E, y):
    """Logits of the bf16 operands, output rounded to bf16, target logit exact (fp32)."""
    hb, Eb = h.bfloat16(), E.bfloat16()
    logits = (hb @ Eb.t()).float()
    logits[torch.arange(y.shape[0]), y] = (hb.float() * Eb.float()[y]).sum(1)
    return logits


def test_bf16_head_computes_the_matmuls_in_bf16_and_the_loss_in_fp32():
    torch.manual_seed(0)
    E = torch.randn(VOCAB_SIZE, 32) / 32**0.5
    h = (3 * torch.randn(96, 32)).requires_grad_()
    y = torch.randint(0, VOCAB_SIZE, (96,))
    head = tied_head(E, "bf16")
    assert head.rows.dtype == torch.bfloat16 and tied_head(E, "fp32").rows is E  # fp32 with distinct rows: no copy
    loss32 = TiedCrossEntropy.apply(h, E, y, 40)
    (g32,) = torch.autograd.grad(loss32, h)
    loss16 = TiedCrossEntropy.apply(h, head, y, 40)
    (g16,) = torch.autograd.grad(loss16, h)
    assert loss16.dtype == torch.float32 and g16.dtype == torch.float32
    loss16, loss32 = loss16.detach(), loss32.detach()
    assert float(loss16) != float(loss32)  # really bf16 products ...
    assert float(loss16) == pytest.approx(float(loss32), rel=1e-3)  # ... within bf16's error
    # exactly the cross-entropy of the bf16 products (log-sum-exp in fp32)
    h_ref = h.detach().bfloat16().float().requires_grad_()
    reference = F.cross_entropy(_reference_bf16_logits(h_ref, E, y), y)
    assert float(loss16) == pytest.approx(float(reference.detach()), rel=1e-6)
    # ∂L/∂h: the softmax weights meet E in a bf16 matmul too (8 significant bits)
    assert torch.allclose(g16, g32, rtol=0, atol=2e-2 * float(g32.abs().max()))
    assert not torch.equal(g16, g32)
    # a bf16 hidden state (an autocast region's output) gets a bf16 gradient
    hb = h.detach().bfloat16().requires_grad_()
    (gb,) = torch.autograd.grad(TiedCrossEntropy.apply(hb, head, y, 40), hb)
    assert gb.dtype == torch.bfloat16
    # evaluation: the same NLL per token, the top-1 hit of the exact target logit
    nll16, hit16 = tied_token_nll(h.detach(), head, y, 40)
    nll32, hit32 = tied_token_nll(h.detach(), E, y, 40)
    assert nll16.dtype == torch.float32 and float(nll16.mean()) == pytest.approx(float(loss16), rel=1e-6)
    assert torch.allclose(nll16, nll32, atol=0.05) and not torch.equal(nll16, nll32)
    y_top = (h.detach() @ E.t()).argmax(1)  # targets that are the fp32 top-1
    assert tied_token_nll(h.detach(), head, y_top, 40)[1].float().mean() > 0.9


def _markov_split(words, successors, n, seed, context_dim):
    """A stream walking ``successors`` (two per word, coin-flipped) and a random context cache."""
    gen = torch.Generator().manual_seed(seed)
    coins = torch.randint(0, 2, (n,), generator=gen)
    out, w = torch.empty(n, dtype=torch.long), 0
    for i in range(n):
        out[i] = words[w]
        w = int(successors[w, coins[i]])
    return Split(out, torch.randn(n, 1, context_dim, generator=gen))


@pytest.fixture(scope="module")
def tiny_study():
    """The tiny study's Phase 2 shapes (config/test.yaml: d_e = d_c = 16, GPT-2 vocabulary,
    unit-norm embedding rows, batch 128, eval every 20) on a 300-word Markov chain."""
    gen = torch.Generator().manual_seed(0)
    E = torch.randn(VOCAB_SIZE, 16, generator=gen)
    words = torch.randperm(VOCAB_SIZE, generator=gen)[:300]
    successors = torch.randint(0, 300, (300, 2), generator=gen)
    train = _markov_split(words, successors, 2400, 1, 16)
    dev = _markov_split(words, successors, 400, 2, 16)
    return E / E.norm(dim=1, keepdim=True), train, dev


def test_phase2_bf16_and_fp32_dev_ppl_agree_on_a_tiny_study_run(tiny_study):
    E, train, dev = tiny_study
    cfg = Phase2Config(max_steps=60, min_steps=60, eval_every=20, patience=2, batch_size=128, chunk_tokens=64, learning_rate=1e-2)
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        token_input, block = TokenInput(E), TokenBlock(ModelConfig(16, 16))
        init_weights(block)
        result = train_phase2(block, token_input, train, dev, cfg, precision=precision)
        assert result.summary["precision"] == precision
        runs[precision] = (result, block, token_input)
    (r32, block32, token_input), (r16, _, _) = runs["fp32"], runs["bf16"]
    assert r32.history[0]["dev_ppl"] > r32.summary["dev_ppl"]  # it learns
    assert r16.summary["dev_ppl"] == pytest.approx(r32.summary["dev_ppl"], rel=PPL_TOLERANCE)
    assert [r["dev_loss"] for r in r16.history] != [r["dev_loss"] for r in r32.history]  # bf16 really ran
    # the same weights scored in both precisions
    same32 = evaluate(block32, token_input, dev, cfg)
    same16 = evaluate(block32, token_input, dev, cfg, precision="bf16")
    assert same32["ppl"] == r32.summary["dev_ppl"]
    assert same16["ppl"] == pytest.approx(same32["ppl"], rel=EVAL_TOLERANCE) and same16["ppl"] != same32["ppl"]
    assert abs(same16["accuracy"] - same32["accuracy"]) <= 2 / dev.targets


V_TOY, D_TOY = 40, 16


def _toy_stream(n, seed):
    """next = 7·prev + {0, 1} (mod 40): two equally likely successors (tests/test_baselines.py)."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randint(0, 2, (n,), generator=gen)
    out = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        out[i] = (7 * out[i - 1] + steps[i]) % V_TOY
    return out


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_baseline_bf16_and_fp32_dev_ppl_agree(kind):
    E = torch.randn(V_TOY, D_TOY, generator=torch.Generator().manual_seed(0))
    E = E / E.norm(dim=1, keepdim=True)
    train, dev = _toy_stream(3000, 1), _toy_stream(600, 2)
    cfg = NeuralTrainConfig(
        learning_rate=1e-2, batch_size=4, seq_len=16, eval_every=20, patience=10**6, min_steps=80, max_steps=80, chunk_tokens=64
    )
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        shape = TransformerConfig(24, num_layers=1, num_heads=2, block_size=16)
        model = LSTMLM(E, 24) if kind == "lstm" else TransformerLM(E, shape)
        result = train_neural_lm(model, train, dev, cfg, seed=0, stateful=kind == "lstm", precision=precision)
        history, summary = result.history, result.summary
        assert summary["precision"] == precision
        results[precision] = (history, summary, model)
    (h32, s32, model32), (h16, s16, _) = results["fp32"], results["bf16"]
    assert s32["dev_ppl"] < 0.5 * V_TOY  # it learns
    assert s16["dev_ppl"] == pytest.approx(s32["dev_ppl"], rel=PPL_TOLERANCE)
    assert [r["dev_loss"] for r in h16] != [r["dev_loss"] for r in h32]
    same16 = evaluate_stream(model32, dev, cfg.chunk_tokens, "bf16")
    assert same16["ppl"] == pytest.approx(s32["dev_ppl"], rel=EVAL_TOLERANCE) and same16["ppl"] != s32["dev_ppl"]
    assert math.isfinite(same16["loss"]) and same16["token_nll"].dtype.name == "float32"


def test_phase1_bf16_training_sweeps_agree_with_fp32():
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(300, 16))
    stream = torch.randint(0, 300, (3000,))
    cfg = Phase1Config(max_iterations=10, min_iterations=10, stop_convergence_rate=1.1, batch_size=512, er_every=1)
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        block = ContextBlock(ModelConfig(16, 16))
        init_weights(block)
        runs[precision] = train_phase1(block, token_input, stream, cfg, val_stream=stream[:500], precision=precision)
        assert runs[precision].summary["precision"] == precision
        assert runs[precision].extra["contexts"].dtype == torch.float32
    s32, s16 = runs["fp32"].summary, runs["bf16"].summary
    assert runs["bf16"].history[0]["total_loss"] != runs["fp32"].history[0]["total_loss"]
    assert runs["bf16"].history[0]["total_loss"] == pytest.approx(runs["fp32"].history[0]["total_loss"], rel=1e-2)
    assert s16["final_cvfp_loss"] == pytest.approx(s32["final_cvfp_loss"], rel=0.05, abs=1e-4)
    assert s16["train_effective_rank"] == pytest.approx(s32["train_effective_rank"], rel=0.02)
    assert abs(s16["train_convergence_rate"] - s32["train_convergence_rate"]) <= 0.02
