"""A run that is SIGKILLed and resumed ends with exactly the numbers of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, torch
    from newllm.checkpoint import CheckpointSpec
    from newllm.model import ContextBlock, ModelConfig, TokenBlock, TokenInput, init_weights
    from newllm.phase1 import Phase1Config, train_phase1
    from newllm.phase2 import Phase2Config, Split, train_phase2

    phase, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    token_input = TokenInput(torch.randn(40, 6), 1)
    stream = torch.randint(0, 40, (300,))
    val = torch.randint(0, 40, (120,))
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None

    def fault(records):  # fault injection lives here, in the test: SIGKILL right after a save
        if records == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    spec = CheckpointSpec(ckpt, "fingerprint-1", every=1, on_save=fault) if ckpt != "-" else None
    if phase == "phase1":
        block = ContextBlock(ModelConfig(8, 6))
        init_weights(block)
        cfg = Phase1Config(max_iterations=12, min_iterations=2, batch_size=64, stop_rule="val_er", er_patience=20,
                           context_noise=0.05)
        result = train_phase1(block, token_input, stream, cfg, val_stream=val, seed=3, checkpoint=spec)
        numbers = [[r["total_loss"], r["val_effective_rank"], r["converged"]] for r in result.history]
        summary = result.summary
    elif phase in ("lstm", "transformer"):
        from newllm.baselines.models import LSTMLM, TransformerConfig, TransformerLM
        from newllm.baselines.training import NeuralTrainConfig, train_neural_lm

        model = LSTMLM(token_input.weight, 8) if phase == "lstm" else TransformerLM(
            token_input.weight, TransformerConfig(8, num_layers=1, num_heads=2, block_size=12, dropout=0.1))
        cfg = NeuralTrainConfig(batch_size=3, seq_len=12, eval_every=5, patience=50, min_steps=0, max_steps=40,
                                chunk_tokens=16)
        result = train_neural_lm(model, stream, val, cfg, seed=5, stateful=phase == "lstm", checkpoint=spec)
        history, summary = result.history, result.summary
        numbers = [[r["train_loss"], r["dev_loss"], r["dev_accuracy"]] for r in history]
        block = model
    else:
        block = TokenBlock(ModelConfig(4, 6))
        init_weights(block)
        cache, val_cache = torch.randn(300, 1, 4), torch.randn(120, 1, 4)
        cfg = Phase2Config(max_steps=60, min_steps=0, eval_every=7, patience=4, batch_size=32, chunk_tokens=16)
        result = train_phase2(block, token_input, Split(stream, cache), Split(val, val_cache), cfg, seed=5, checkpoint=spec)
        history, summary = result.history, result.summary
        numbers = [[r["train_loss"], r["dev_loss"], r["dev_accuracy"]] for r in history]
    weights = {k: v.flatten().tolist() for k, v in block.state_dict().items()}
    summary = {k: v for k, v in summary.items() if "second" not in k and "per_s" not in k}
    json.dump({"numbers": numbers, "weights": weights, "summary": summary}, open(out, "w"))
    """
)


def _run(tmp_path, phase, ckpt, out, kill_at=None):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    extra = [str(kill_at)] if kill_at else []
    return subprocess.run(
        [sys.executable, str(script), phase, str(ckpt), str(out), *extra], env=env, capture_output=True, text=True, timeout=300
    )


# kill_at: the number of history records (Phase 1 iterations, Phase 2 evaluations) saved
@pytest.mark.parametrize("phase,kill_at", [("phase1", 5), ("phase2", 3), ("lstm", 3), ("transformer", 3)])
def test_sigkilled_run_resumes_to_identical_results(tmp_path, phase, kill_at):
    reference = _run(tmp_path, phase, "-", tmp_path / "reference.json")
    assert reference.returncode == 0, reference.stderr
    ckpt = tmp_path / "ckpt.safetensors"
    killed = _run(tmp_path, phase, ckpt, tmp_path / "never.json", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL  # really killed, mid-run
    assert ckpt.is_file() and not (tmp_path / "never.json").exists()
    resumed = _run(tmp_path, phase, ckpt, tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "reference.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert a["numbers"] == b["numbers"]  # every iteration/epoch, bit for bit
    assert a["weights"] == b["weights"]
    key = "resumed_from_iteration" if phase == "phase1" else "resumed_from_step"
    # the record the kill followed: Phase 1 iteration; Phase 2 evaluation every 7 steps; the
    # baselines' evaluations at steps 5, 10, 15, ... (the 3rd at step 15)
    resumed_at = {"phase1": kill_at + 1, "phase2": kill_at * 7}.get(phase, kill_at * 5)
    assert a["summary"].pop(key) is None and b["summary"].pop(key) == resumed_at
    assert a["summary"] == b["summary"]


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    import torch

    from newllm.checkpoint import CheckpointSpec, load_checkpoint, save_checkpoint

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.ones(2)}, {"epoch": 1}, "config-A")
    assert load_checkpoint(path, "config-A")[1] == {"epoch": 1}
    assert load_checkpoint(path, "config-B") is None
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert load_checkpoint(path, "config-A") is None
    with pytest.raises(ValueError):
        CheckpointSpec(path, "x", every=0)
