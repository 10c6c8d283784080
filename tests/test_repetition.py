import pytest
import torch

from newllm.model import ContextBlock, TokenInput, init_weights
from newllm.repetition import (
    RepetitionConfig,
    RepetitionTrainer,
    _token_rows,
    collapse_check,
    convergence_loss,
    evaluate_round_robin,
    evaluate_sequential,
    frequent_phrases,
    make_trainer_factory,
    repeated_sequences,
    round_robin_schedule,
    run_contexts,
    sequence_metrics,
    summarise_protocol,
    train_stages,
    verdict,
)
from newllm.tokenizer import EOT_ID


def test_convergence_loss_and_metrics_hand_computed():
    c = torch.tensor([[[0.0], [1.0], [1.0], [3.0]]])  # one sequence, d = 1
    assert convergence_loss(c, 1).item() == pytest.approx((1 + 0 + 4) / 3)
    assert convergence_loss(c, 2).item() == pytest.approx((1 + 4) / 2)
    m = sequence_metrics(c, 1)
    assert m["change_rate"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["cyclic_distance"] == pytest.approx(1.0) and m["final_cyclic_distance"] == pytest.approx(2.0)
    assert sequence_metrics(c, 2)["cyclic_distance"] == pytest.approx((1 + 2) / 2)


def test_repeated_sequences_and_frequent_phrases():
    assert repeated_sequences([(5, 6), (7, 8)], 3).tolist() == [[5, 6, 5, 6, 5, 6], [7, 8, 7, 8, 7, 8]]
    with pytest.raises(ValueError):
        repeated_sequences([(1,), (1, 2)], 2)
    stream = [9, 9, 9, 9, 1, 2, 1, 2, EOT_ID, 3]
    assert frequent_phrases(stream, 1, 2) == [(9,), (1,)]  # 9 four times; 1 and 2 twice, 1 seen first
    assert frequent_phrases(stream, 2, 2) == [(9, 9), (1, 2)]
    assert all(EOT_ID not in p for p in frequent_phrases(stream, 2, 4))  # all 4 EOT-free bigrams
    with pytest.raises(ValueError, match="distinct 2-token phrases"):
        frequent_phrases(stream, 2, 50)


def test_round_robin_gives_every_token_one_batch_per_epoch_in_order():
    assert round_robin_schedule([7, 3, 9], 2) == [(1, 7), (1, 3), (1, 9), (2, 7), (2, 3), (2, 9)]
    cfg = RepetitionConfig(repetitions=6)
    factory = make_trainer_factory(
        {"context_dim": 8, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )
    tokens = [4, 11, 2, 15]
    rows, fixed, steps = evaluate_round_robin(factory, tokens, epochs=3, repetitions=6, cfg=cfg)
    assert steps == round_robin_schedule(tokens, 3)
    for epoch in (1, 2, 3):
        assert [t for e, t in steps if e == epoch] == tokens
    assert [r["token"] for r in rows] == tokens and fixed.shape == (4, 8)


def test_sequential_protocol_uses_a_fresh_model_per_token():
    cfg = RepetitionConfig(repetitions=5)
    made = []
    base = make_trainer_factory(
        {"context_dim": 6, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )

    def factory(k):
        made.append(k)
        return base(k)

    rows, fixed = evaluate_sequential(factory, [1, 2, 3], epochs=2, repetitions=5, cfg=cfg)
    assert made == [1, 2, 3] and len(rows) == 3 and fixed.shape == (3, 6)


def test_improvement_and_convergence_arithmetic():
    rows = _token_rows([10, 20], torch.tensor([1.0, 0.5]), torch.tensor([0.005, 0.25]), 0.1, 0.01)
    assert rows[0]["improvement"] == pytest.approx(0.995) and rows[0]["converged"]
    assert rows[1]["improvement"] == pytest.approx(0.5) and not rows[1]["converged"]
    summary = summarise_protocol(rows)
    assert summary["mean_improvement"] == pytest.approx((0.995 + 0.5) / 2)
    assert summary["convergence"] == "50.0 % (1/2)" and summary["converged"] == 1
    assert summary["converged_before_training"] == 0
    assert (
        summarise_protocol(_token_rows([1], torch.tensor([0.005]), torch.tensor([0.001]), 0.0, 0.01))["converged_before_training"]
        == 1
    )


def _degenerate_block():
    """A ContextBlock that ignores its token input: every token reaches one attractor."""
    torch.manual_seed(0)
    block = ContextBlock(8, 4)
    init_weights(block)
    with torch.no_grad():
        block.layers[0].ffn[0].weight[:, 8:] = 0.0  # columns that read x̃
    return block


def test_collapse_flag_on_a_degenerate_model():
    token_input = TokenInput(torch.randn(30, 4))
    sequences = repeated_sequences([[t] for t in range(10)], 40)
    _, layers = run_contexts(_degenerate_block(), token_input, sequences, grad=False)
    fixed = layers[:, -1, -1]
    check = collapse_check(fixed, threshold=0.01)
    assert check["collapsed"] and check["max"] < 1e-5
    rows = _token_rows(range(10), torch.ones(10), torch.zeros(10), 0.0, 0.01)  # "all converged"
    assert verdict(summarise_protocol(rows), check).startswith("COLLAPSED")
    distinct = {"collapsed": False}
    assert verdict(summarise_protocol(rows), distinct) == "CONVERGED (distinct fixed points)"
    early = _token_rows(range(4), torch.tensor([0.005, 0.5, 0.5, 0.5]), torch.zeros(4), 0.0, 0.01)
    assert (
        verdict(summarise_protocol(early), distinct)
        == "CONVERGED (distinct fixed points; 1/4 already below the threshold before training)"
    )
    # a model that reads its input keeps distinct fixed points
    torch.manual_seed(1)
    healthy = ContextBlock(8, 4)
    init_weights(healthy)
    _, layers = run_contexts(healthy, token_input, sequences, grad=False)
    assert not collapse_check(layers[:, -1, -1], 0.01)["collapsed"]
    with pytest.raises(ValueError):
        collapse_check(fixed[:1], 0.01)


def test_staged_training_rows_and_learning():
    cfg = RepetitionConfig(repetitions=10, learning_rate=1e-2)
    factory = make_trainer_factory(
        {"context_dim": 8, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )
    trainer = factory(0)
    phrases = {1: [(1,), (2,), (3,)], 2: [(1, 2), (4, 5)]}
    rows = train_stages(trainer, phrases, repetitions=10, epochs_per_stage=15, batch_size=2)
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, e) for e in range(1, 16)] + [(2, e) for e in range(1, 16)]
    stage1 = [r["convergence_loss"] for r in rows if r["stage"] == 1]
    assert stage1[-1] < stage1[0]
    assert isinstance(trainer, RepetitionTrainer)


def test_token_ce_term_is_optional():
    cfg = RepetitionConfig(repetitions=4, ce_weight=0.5)
    factory = make_trainer_factory(
        {"context_dim": 6, "num_input_tokens": 2, "num_layers": 2, "ffn_layers": 1, "activation": "relu"},
        torch.randn(20, 4),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )
    metrics = factory(0).step(repeated_sequences([(1, 2), (3, 4)], 4), 2)
    assert metrics["token_ce"] > 0
