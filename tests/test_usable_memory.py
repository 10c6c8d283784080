"""Usable memory: truncated-history evaluation of a trained TokenBlock and its tables."""

import math

import pytest
import torch

from newllm.context_cache import solve_cache
from newllm.model import ModelConfig, TokenInput, build_blocks
from newllm.phase2 import Phase2Config, Split, evaluate
from newllm.usable_memory import history_curve, history_needed, memory_probe_tables, usable_memory_tables

RUN = {"model": "cvfp", "variant": "base", "samples": 10, "context_dim": 12, "seed": 0}


@pytest.fixture
def trained_like():
    torch.manual_seed(5)
    token_input = TokenInput(torch.randn(40, 8), num_input_tokens=1)
    settings = {"num_layers": 1, "context_dim": 12, "num_input_tokens": 1, "ffn_layers": 1, "activation": "gelu"}
    context_block, token_block = build_blocks(ModelConfig.from_dict(settings, 8))
    stream = torch.randint(0, 40, (90,))
    cache, _ = solve_cache(context_block.eval(), token_input, stream, "sequential")
    return context_block, token_block.eval(), token_input, stream, cache


def test_history_all_is_the_normal_evaluation_and_long_k_reaches_it(trained_like):
    context_block, token_block, token_input, stream, cache = trained_like
    cfg = Phase2Config.from_dict({}, torch.device("cpu"))
    rows = history_curve(context_block, token_block, token_input, stream, cache, cfg, lengths=[1, 2, 200])
    assert [r["history"] for r in rows] == [1, 2, 200, "all"]
    normal = evaluate(token_block, token_input, Split(stream, cache), cfg)
    assert rows[-1]["loss"] == normal["loss"] and rows[-1]["tokens"] == normal["tokens"] == 89
    # 200 tokens of history > the 90-token stream: the full recurrence, up to summation order
    assert rows[2]["loss"] == pytest.approx(rows[-1]["loss"], rel=1e-6)
    reset = evaluate(token_block, token_input, Split(stream, block_output_of_zero(context_block, token_input, stream)), cfg)
    assert rows[0]["loss"] == pytest.approx(reset["loss"], rel=1e-6)


def block_output_of_zero(block, token_input, stream):
    with torch.no_grad():
        return block(torch.zeros(stream.shape[0], block.context_dim), token_input(stream, torch.arange(stream.shape[0])))


def test_history_needed_by_hand():
    rows = [
        {"history": 1, "loss": 5.0},
        {"history": 2, "loss": 4.5},
        {"history": 4, "loss": 4.05},
        {"history": "all", "loss": 4.0},
    ]
    # gain 1.0; k=2 reaches 0.5, k=4 reaches 0.95 (>= 0.9, < 0.99)
    assert history_needed(rows) == {"history_gain": 1.0, "k90": 4, "k99": "all"}
    flat = [{"history": 1, "loss": 4.0}, {"history": "all", "loss": 4.1}]
    assert history_needed(flat) == {"history_gain": pytest.approx(-0.1), "k90": None, "k99": None}
    with pytest.raises(ValueError, match="start at k = 1"):
        history_needed(rows[1:])


def test_tables_have_one_row_per_run_and_k():
    record = {
        "run": RUN,
        "curve": [
            {"history": 1, "loss": 5.0, "ppl": math.exp(5.0), "accuracy": 0.1, "tokens": 89},
            {"history": 2, "loss": 4.6, "ppl": math.exp(4.6), "accuracy": 0.1, "tokens": 89},
            {"history": "all", "loss": 4.2, "ppl": math.exp(4.2), "accuracy": 0.2, "tokens": 89},
        ],
        "history_gain": 0.8,
        "k90": "all",
        "k99": "all",
    }
    rows, summary = usable_memory_tables([record])
    assert list(rows["history"]) == ["1", "2", "all"]
    assert list(rows["share_of_history_gain"]) == pytest.approx([0.0, 0.5, 1.0])
    assert summary.iloc[0]["history_gain"] == 0.8 and summary.iloc[0]["k90"] == "all"
    probe = {
        "lags": [1, 2],
        "effect": [0.4, 0.1],
        "relative": [1.0, 0.25],
        "lag_below_10pct": None,
        "lag_below_1pct": None,
        "max_lag": 2,
        "positions": 3,
    }
    table, curves = memory_probe_tables([{"run": RUN, "memory_probe": probe}])
    assert len(table) == 1 and list(curves["relative"]) == [1.0, 0.25]
