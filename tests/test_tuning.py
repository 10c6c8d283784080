"""The equal tuning budget: the grid, who is tuned, the choice on dev, and how a job finds its settings."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from newllm.model import ModelConfig, TokenBlock
from newllm.study import CATALOGUE
from newllm.tuning import (
    Trial,
    apply_trial,
    choice_model,
    choose,
    job_trial,
    trial_row,
    trials,
    tuned_models,
    tuning_markdown,
    tuning_run,
)

DEFAULT_MODELS = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())["models"]
EVERY_MODEL = list(CATALOGUE)


def test_the_grid_is_every_factor_times_every_dropout_in_order_and_names_round_trip():
    grid = trials({"learning_rate_factors": [0.5, 1.0, 2.0], "dropouts": [0.0, 0.1]})
    assert [t.name for t in grid] == [
        "lr0.5_dropout0",
        "lr0.5_dropout0.1",
        "lr1_dropout0",
        "lr1_dropout0.1",
        "lr2_dropout0",
        "lr2_dropout0.1",
    ]
    assert [Trial.parse(t.name) for t in grid] == grid
    with pytest.raises(ValueError, match="'lr_fast'"):
        Trial.parse("lr_fast")


def test_phase2_is_tuned_on_cvfp_for_every_context_model_and_each_neural_lm_on_itself():
    assert tuned_models(DEFAULT_MODELS) == ["cvfp", "lstm"]
    assert tuned_models(EVERY_MODEL) == ["cvfp", "lstm", "mingru", "transformer"]
    assert {m: choice_model(m, EVERY_MODEL) for m in EVERY_MODEL} == {
        "cvfp": "cvfp",
        "reset_context": "cvfp",
        "lstm_states": "cvfp",
        "untrained_context": "cvfp",
        "no_context": "cvfp",
        "ngram": None,
        "ngram_slice": None,
        "lstm": "lstm",
        "mingru": "mingru",
        "transformer": "transformer",
    }
    # without cvfp, Phase 2 is tuned on the first context model of the study
    assert tuned_models(["no_context", "ngram"]) == ["no_context"]


def test_the_tuning_run_is_the_middle_size_and_dim_first_seed_and_variant():
    config = {
        "sample_sizes": [32, 4, 8, 16],
        "context_dims": [128, 32, 64],
        "seeds": [3, 1],
        "variants": {"base": {}, "tok2": {}},
        "tuning": {"samples": None},
    }
    assert tuning_run(config) == {"variant": "base", "samples": 8, "context_dim": 64, "seed": 3}
    config["tuning"]["samples"] = 32
    assert tuning_run(config)["samples"] == 32
    config["tuning"]["samples"] = 5
    with pytest.raises(ValueError, match=r"tuning.samples=5 is not a sample size; allowed: 4, 8, 16, 32"):
        tuning_run(config)


def test_a_trial_scales_the_configured_learning_rate_and_sets_dropout():
    section = {"learning_rate": 0.01, "dropout": 0.0, "batch_size": 256}
    assert apply_trial(section, Trial(0.5, 0.1)) == {"learning_rate": 0.005, "dropout": 0.1, "batch_size": 256}
    assert apply_trial(section, None) == section


def _row(trial, loss):
    return {"trial": trial, "dev_loss": loss}


def test_the_lowest_dev_loss_wins_and_ties_go_to_the_earlier_grid_point():
    assert choose([_row("a", 5.1), _row("b", 4.9), _row("c", 5.0)])["trial"] == "b"
    assert choose([_row("a", 5.0), _row("b", 4.9), _row("c", 4.9)])["trial"] == "b"
    with pytest.raises(ValueError, match=r"\['b'\] have a non-finite dev loss"):
        choose([_row("a", 5.0), _row("b", math.nan)])
    with pytest.raises(ValueError, match="no tuning trials"):
        choose([])


def test_a_trial_row_reads_the_settings_the_trial_trained_with_and_no_test_score():
    summary = {"dev_loss": 5.0, "dev_ppl": 148.4, "best_step": 40, "steps": 60, "stopped_by": "early_stopping"}
    summary |= {"undertrained": False, "train_seconds": 1.5}
    phase2 = {"config": {"phase2": {"learning_rate": 0.02, "dropout": 0.1}}, "summary": summary}
    row = trial_row("cvfp", Trial(2.0, 0.1), phase2)
    assert row["learning_rate"] == 0.02 and row["dev_loss"] == 5.0 and row["trial"] == "lr2_dropout0.1"
    assert not any(key.startswith("test") for key in row)
    lstm = {"baseline": {"settings": {"learning_rate": 0.005, "dropout": 0.0}}, "config": {}, "summary": summary}
    assert trial_row("lstm", Trial(0.5, 0.0), lstm)["learning_rate"] == 0.005


def test_a_job_trains_with_its_trial_else_the_chosen_one_else_the_configured_settings(tmp_path):
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps({"chosen": {"trial": "lr0.5_dropout0.1"}}))
    trial_job = SimpleNamespace(params=SimpleNamespace(trial="lr2_dropout0"), input=SimpleNamespace())
    assert job_trial(trial_job) == Trial(2.0, 0.0)
    run_job = SimpleNamespace(params=SimpleNamespace(), input=SimpleNamespace(tuning_choice=str(choice)))
    assert job_trial(run_job) == Trial(0.5, 0.1)
    assert job_trial(SimpleNamespace(params=SimpleNamespace(), input=SimpleNamespace())) is None


def test_token_block_dropout_acts_in_training_only_and_rate_zero_is_the_identity():
    torch.manual_seed(0)
    plain = TokenBlock(ModelConfig(4, 6))
    dropped = TokenBlock(ModelConfig(4, 6), dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout has no parameters: the same weights load
    contexts, tokens = torch.randn(32, 1, 4), torch.randn(32, 6)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(contexts, tokens), plain(contexts, tokens), rtol=0, atol=0)
    plain.train(), dropped.train()
    assert not torch.allclose(dropped(contexts, tokens), plain(contexts, tokens))
    # rate 0 in training mode is the identity and draws nothing from the RNG: runs
    # without dropout train exactly as before it existed
    torch.manual_seed(1)
    trained = plain.train()(contexts, tokens)
    after = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)
    assert torch.equal(trained, plain.eval()(contexts, tokens))


def _table(model, factors, chosen, undertrained=()):
    return [
        {
            "model": model,
            "trial": Trial(f, 0.0).name,
            "learning_rate_factor": f,
            "dropout": 0.0,
            "learning_rate": 0.01 * f,
            "dev_ppl": 100.0 + i,
            "undertrained": f in undertrained,
            "chosen": f == chosen,
            "tuning_samples": 32,
            "tuning_seed": 0,
        }
        for i, f in enumerate(factors)
    ]


def test_the_verdict_names_each_choice_and_warns_at_the_grid_edge():
    rows = _table("cvfp", [0.5, 1.0, 2.0], chosen=1.0) + _table("lstm", [0.5, 1.0, 2.0], chosen=2.0, undertrained=(0.5,))
    text = "\n".join(tuning_markdown(rows))
    assert "the same 3 trials" in text and "at 32 conversations, seed 0" in text
    assert (
        "- Phase 2, tuned on cvfp (every context model): learning rate 0.01 (factor 1), dropout 0; dev PPL 101.00 of 3 trials."
        in text
    )
    lstm = next(line for line in text.splitlines() if line.startswith("- lstm"))
    assert "learning rate 0.02 (factor 2)" in lstm and "at the edge of the learning-rate grid" in lstm
    assert "1 trial(s) undertrained" in lstm
    assert tuning_markdown([]) == []
