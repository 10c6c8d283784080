import pytest
import torch

from newllm.model import ContextBlock, ModelConfig, TokenInput, init_weights
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
    per_sequence_loss,
    repeated_sequences,
    round_robin_schedule,
    run_contexts,
    sequence_metrics,
    summarise_protocol,
    train_stages,
    verdict,
)
from newllm.solvers import unroll
from newllm.tokenizer import EOT_ID


def test_convergence_loss_and_metrics_hand_computed():
    c = torch.tensor([[[0.0], [1.0], [1.0], [3.0]]])  # one sequence, d = 1
    assert convergence_loss(c, 1).item() == pytest.approx((1 + 0 + 4) / 3)
    assert convergence_loss(c, 2).item() == pytest.approx((1 + 4) / 2)
    m = sequence_metrics(c, 1)
    assert m["change_rate"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["cyclic_distance"] == pytest.approx(1.0) and m["final_cyclic_distance"] == pytest.approx(2.0)
    assert sequence_metrics(c, 2)["cyclic_distance"] == pytest.approx((1 + 2) / 2)
    two = torch.cat([c, -c])  # a second sequence: the loss is per sequence, squared differences
    assert per_sequence_loss(two, 1).tolist() == pytest.approx([5 / 3, 5 / 3])
    assert per_sequence_loss(torch.tensor([[[0.0], [1.0], [3.0]]]), 2).tolist() == pytest.approx([9.0])


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
    assert frequent_phrases([5, 7, 7], 2, 2) == [(5, 7), (7, 7)]  # the last window counts
    with pytest.raises(ValueError, match="1..4"):
        frequent_phrases(stream, 5, 1)
    # 4-token phrases of large ids: an integer key per phrase (a float key would merge
    # the first and last window, which differ only in their last token)
    big = [50000, 50000, 50000, 1, 50000, 50000, 50000, 2]
    assert frequent_phrases(big, 4, 5)[0] == (50000, 50000, 50000, 1) and len(frequent_phrases(big, 4, 5)) == 5
    mixed = [1, 9, 9, 50000, 2, 9, 9, 50000]  # differ in the first token only
    assert sorted(frequent_phrases(mixed, 4, 5)) == sorted({tuple(mixed[i : i + 4]) for i in range(5)})


def test_round_robin_gives_every_token_one_batch_per_epoch_in_order():
    assert round_robin_schedule([7, 3, 9], 2) == [(1, 7), (1, 3), (1, 9), (2, 7), (2, 3), (2, 9)]
    cfg = RepetitionConfig(repetitions=6)
    factory = make_trainer_factory(
        {"context_dim": 8, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4, generator=torch.Generator().manual_seed(0)),
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
    # initial losses are those of the untrained shared model (factory(0)); training lowers every one
    fresh = factory(0)
    sequences = repeated_sequences([[t] for t in tokens], 6)
    initial, _ = fresh.evaluate(sequences, 1)
    assert [r["initial_loss"] for r in rows] == pytest.approx(initial.tolist(), rel=1e-6)
    # training lowers the loss summed over the tokens (not each token's for every embedding draw)
    assert sum(r["final_loss"] for r in rows) < sum(r["initial_loss"] for r in rows)
    assert [r["improvement"] for r in rows] == pytest.approx([1 - r["final_loss"] / r["initial_loss"] for r in rows])


def test_sequential_protocol_uses_a_fresh_model_per_token():
    cfg = RepetitionConfig(repetitions=5)
    made = []
    base = make_trainer_factory(
        {"context_dim": 6, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4, generator=torch.Generator().manual_seed(0)),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )

    def factory(k):
        made.append(k)
        return base(k)

    rows, fixed = evaluate_sequential(factory, [1, 2, 3], epochs=2, repetitions=5, cfg=cfg)
    assert made == [1, 2, 3] and len(rows) == 3 and fixed.shape == (3, 6)
    # token i's initial loss is that of the fresh model factory(i + 1); its 2 steps lower it
    for i, (row, token) in enumerate(zip(rows, [1, 2, 3])):
        initial, _ = base(i + 1).evaluate(repeated_sequences([[token]], 5), 1)
        assert row["token"] == token and row["initial_loss"] == pytest.approx(initial.item(), rel=1e-6)
        assert row["final_loss"] < row["initial_loss"]
    # the fixed point is the last context of the trained model, not of a fresh one
    assert not torch.allclose(fixed[0], base(1).evaluate(repeated_sequences([[1]], 5), 1)[1][0])


def test_zero_initial_loss_and_the_threshold_itself():
    f64 = torch.float64  # the losses as the threshold compares them, no float32 rounding
    rows = _token_rows([3], torch.tensor([0.0], dtype=f64), torch.tensor([0.01], dtype=f64), 0.5, 0.01)
    assert rows == [{"token": 3, "initial_loss": 0.0, "final_loss": 0.01, "improvement": 0.0, "converged": False, "seconds": 0.5}]
    initial, final = torch.tensor([0.01, 1, 1, 1], dtype=f64), torch.tensor([0.0, 0, 0, 1], dtype=f64)
    summary = summarise_protocol(_token_rows([1, 2, 3, 4], initial, final, 2.0, 0.01))
    assert summary == {
        "tokens": 4,
        "mean_improvement": pytest.approx((1 + 1 + 1 + 0) / 4),
        "converged": 3,
        "convergence_rate": 0.75,
        "convergence": "75.0 % (3/4)",
        "converged_before_training": 0,  # 0.01 is not below the threshold 0.01
        "mean_initial_loss": pytest.approx(3.01 / 4),
        "mean_final_loss": 0.25,
        "seconds_per_token": 2.0,
    }
    assert verdict(summary, {"collapsed": False}) == "PARTIAL (75.0 % (3/4))"
    assert verdict({**summary, "converged": 0, "convergence_rate": 0.0}, {"collapsed": False}) == "NOT CONVERGED"
    no_count = {"tokens": 2, "converged": 2, "convergence_rate": 1.0}  # older summaries lack the count
    assert verdict(no_count, {"collapsed": False}) == "CONVERGED (distinct fixed points)"
    assert verdict(no_count, {"collapsed": True}) == "COLLAPSED (one global attractor; convergence is degenerate)"


def test_collapse_check_hand_computed():
    fixed = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])  # norms 5, 0, 10; pairwise distances 5, 5, 10
    check = collapse_check(fixed, threshold=1.0)
    assert check == {
        "min": 5.0,
        "median": 5.0,
        "max": 10.0,
        "mean_norm": 5.0,
        "relative_median": 1.0,
        "threshold": 1.0,
        "collapsed": False,  # relative exactly at the threshold is not a collapse
        "distances": [5.0, 5.0, 10.0],
    }
    small = collapse_check(torch.tensor([[0.3, 0.0], [0.0, 0.4]]), threshold=0.5)  # two points suffice
    assert small["relative_median"] == pytest.approx(0.5 / 0.35) and not small["collapsed"]
    zero = collapse_check(torch.zeros(3, 2), threshold=0.01)
    assert zero["relative_median"] == 0.0 and zero["collapsed"]


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
    block = ContextBlock(ModelConfig(8, 4))
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
    healthy = ContextBlock(ModelConfig(8, 4))
    init_weights(healthy)
    _, layers = run_contexts(healthy, token_input, sequences, grad=False)
    assert not collapse_check(layers[:, -1, -1], 0.01)["collapsed"]
    with pytest.raises(ValueError):
        collapse_check(fixed[:1], 0.01)


def test_staged_training_rows_and_learning():
    cfg = RepetitionConfig(repetitions=10, learning_rate=1e-2)
    factory = make_trainer_factory(
        {"context_dim": 8, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"},
        torch.randn(20, 4, generator=torch.Generator().manual_seed(0)),
        cfg,
        seed=0,
        device=torch.device("cpu"),
    )
    trainer = factory(0)
    phrases = {1: [(1,), (2,), (3,)], 2: [(1, 2), (4, 5)]}
    rows = train_stages(trainer, phrases, repetitions=10, epochs_per_stage=15, batch_size=2)
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, e) for e in range(1, 16)] + [(2, e) for e in range(1, 16)]
    assert [r["phrases"] for r in rows] == [3] * 15 + [2] * 15 and [r["cycle_length"] for r in rows] == [1] * 15 + [2] * 15
    for stage in (1, 2):
        losses = [r["convergence_loss"] for r in rows if r["stage"] == stage]
        assert losses[-1] < 0.5 * losses[0]  # training on repeated phrases lowers the convergence loss


def _hand_metrics(block, token_input, sequences, cycle):
    """Convergence loss and change rate of ``sequences`` by an explicit loop over tokens."""
    contexts = []
    with torch.no_grad():
        for seq in sequences:
            c, rows = torch.zeros(1, block.context_dim), []
            for t in range(seq.numel()):
                c = block(c, token_input.rows(seq[None])[:, t])[:, -1]
                rows.append(c[0])
            contexts.append(torch.stack(rows))
    c = torch.stack(contexts)  # [P, T, d]
    return {
        "convergence_loss": float(((c[:, cycle:] - c[:, :-cycle]) ** 2).mean()),
        "change_rate": float((c[:, 1:] - c[:, :-1]).norm(dim=-1).mean()),
    }


def test_staged_rows_are_token_weighted_means_of_the_batches_before_their_steps():
    # learning rate 0: every batch is measured with the initial weights, so each epoch's row
    # is the phrase-weighted mean over its batches (2 + 1 phrases) of the untrained model
    cfg = RepetitionConfig(repetitions=4, learning_rate=0.0)
    model = {"context_dim": 6, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"}
    trainer = make_trainer_factory(model, torch.randn(20, 4), cfg, seed=0, device=torch.device("cpu"))(0)
    phrases = {1: [(1,), (2,), (3,)], 2: [(1, 2), (4, 5), (6, 7)]}
    rows = train_stages(trainer, phrases, repetitions=4, epochs_per_stage=2, batch_size=2)
    for row in rows:
        sequences = repeated_sequences(phrases[row["stage"]], 4)
        first = _hand_metrics(trainer.block, trainer.token_input, sequences[:2], row["stage"])
        last = _hand_metrics(trainer.block, trainer.token_input, sequences[2:], row["stage"])
        for key in ("convergence_loss", "change_rate"):
            assert row[key] == pytest.approx((2 * first[key] + last[key]) / 3, rel=1e-5), (row["stage"], key)


def _ce_trainer(ce_weight):
    cfg = RepetitionConfig(repetitions=4, ce_weight=ce_weight, learning_rate=1e-2)
    model = {"context_dim": 6, "num_input_tokens": 2, "num_layers": 2, "ffn_layers": 1, "activation": "relu"}
    embeddings = torch.randn(20, 4, generator=torch.Generator().manual_seed(5))
    return make_trainer_factory(model, embeddings, cfg, seed=0, device=torch.device("cpu"))(0)


def _hand_token_ce(trainer, sequences):
    """Mean CE of token t+1 given x̃_t and every layer's output after processing token t (docs/method.md §6)."""
    with torch.no_grad():
        _, layers = run_contexts(trainer.block, trainer.token_input, sequences, grad=False)  # [P, T, L, d]
        x = trainer.token_input.rows(sequences)
        total, count = 0.0, 0
        for t in range(sequences.shape[1] - 1):
            logits = trainer.token_block(layers[:, t], x[:, t]) @ trainer.token_input.weight.t()
            total += float(torch.nn.functional.cross_entropy(logits, sequences[:, t + 1], reduction="sum"))
            count += sequences.shape[0]
    return total / count


def test_token_ce_term_is_optional():
    sequences = repeated_sequences([(1, 2), (3, 4)], 4)
    without, with_ce = _ce_trainer(0.0), _ce_trainer(0.5)
    token_block = [p.clone() for p in without.token_block.parameters()]
    expected_ce = _hand_token_ce(with_ce, sequences)
    m0, m1 = without.step(sequences, 2), with_ce.step(sequences, 2)
    # ce_weight = 0: no CE is computed and the TokenBlock is not trained
    assert "token_ce" not in m0
    assert all(torch.equal(a, b) for a, b in zip(token_block, without.token_block.parameters()))
    # ce_weight > 0: the CE of the tied head, and it trains the TokenBlock only (its input is detached)
    assert m1["token_ce"] == pytest.approx(expected_ce, rel=1e-5)
    assert m1["convergence_loss"] == pytest.approx(m0["convergence_loss"], rel=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(token_block, with_ce.token_block.parameters()))
    for a, b in zip(without.block.parameters(), with_ce.block.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    # and the CE falls when that term is trained
    for _ in range(20):
        with_ce.step(sequences, 2)
    assert _hand_token_ce(with_ce, sequences) < 0.9 * expected_ce


def test_each_block_is_clipped_by_its_own_norm_and_the_ce_term_needs_a_token_block():
    sequences = repeated_sequences([(1, 2), (3, 4)], 4)
    model = {"context_dim": 6, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"}
    embeddings = torch.randn(20, 4, generator=torch.Generator().manual_seed(5))
    cfg = RepetitionConfig(repetitions=4, ce_weight=0.5, learning_rate=1e-2, grad_clip=1e-4)
    trainer = make_trainer_factory(model, embeddings, cfg, seed=0, device=torch.device("cpu"))(0)
    trainer.step(sequences, 2)
    for block in (trainer.block, trainer.token_block):  # both gradients far above 1e-4 before clipping
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in block.parameters()]))
        assert norm == pytest.approx(1e-4, rel=1e-4)
    # ce_weight > 0 without a TokenBlock: the convergence loss alone, no CE and no TokenBlock to clip
    alone = RepetitionTrainer(trainer.block, trainer.token_input, cfg, token_block=None)
    assert "token_ce" not in alone.step(sequences, 2)


def test_run_contexts_reaches_the_block_through_one_step_only():
    torch.manual_seed(0)
    block = ContextBlock(ModelConfig(6, 4))
    init_weights(block)
    token_input = TokenInput(torch.randn(30, 4))
    sequences = torch.randint(0, 30, (2, 3))
    contexts, _ = run_contexts(block, token_input, sequences)
    params = list(block.parameters())
    # a loss projected on a fixed direction: the plain sum of a unit-gain LayerNorm output
    # is constant, which would make every gradient rounding noise
    direction = torch.randn(6, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((contexts[:, -1] @ direction).sum(), params)
    # the last step fed the previous context as a constant: CVFP's one-step gradient
    last = block(contexts[:, -2].detach(), token_input.rows(sequences)[:, -1])[:, -1]
    for grad, expected in zip(grads, torch.autograd.grad((last @ direction).sum(), params)):
        torch.testing.assert_close(grad, expected)
    # backpropagation through all three steps would differ
    full = unroll(block, token_input.rows(sequences), torch.zeros(2, 6))[:, -1, -1]
    assert not all(torch.allclose(g, f) for g, f in zip(grads, torch.autograd.grad((full @ direction).sum(), params)))


MODEL = {"context_dim": 6, "num_input_tokens": 1, "num_layers": 1, "ffn_layers": 1, "activation": "gelu"}


def _recording(factory):
    made = []

    def wrapped(k):
        made.append(factory(k))
        return made[-1]

    return wrapped, made


def test_round_robin_equals_its_schedule_of_single_token_steps():
    import time

    cfg = RepetitionConfig(repetitions=5, learning_rate=1e-2)
    base = make_trainer_factory(MODEL, torch.randn(20, 4), cfg, seed=0, device=torch.device("cpu"))
    factory, made = _recording(base)
    tokens = [4, 11, 2]
    t0 = time.perf_counter()
    rows, fixed, _ = evaluate_round_robin(factory, tokens, epochs=3, repetitions=5, cfg=cfg)
    elapsed = time.perf_counter() - t0
    # by hand: one fresh model, a cycle-1 step per (epoch, token), then the per-sequence loss
    manual = base(0)
    sequences = repeated_sequences([[t] for t in tokens], 5)
    for _, token in round_robin_schedule(tokens, 3):
        manual.step(sequences[tokens.index(token)][None], 1)
    contexts, _ = run_contexts(manual.block, manual.token_input, sequences, grad=False)
    assert [r["final_loss"] for r in rows] == pytest.approx(per_sequence_loss(contexts, 1).tolist(), rel=1e-5)
    assert torch.allclose(fixed, contexts[:, -1], atol=1e-6)
    assert len(made) == 1 and all(0 <= r["seconds"] <= elapsed / len(tokens) for r in rows)


def test_sequential_equals_epochs_steps_on_each_token_alone():
    import time

    cfg = RepetitionConfig(repetitions=5, learning_rate=1e-2)
    base = make_trainer_factory(MODEL, torch.randn(20, 4), cfg, seed=0, device=torch.device("cpu"))
    t0 = time.perf_counter()
    rows, fixed = evaluate_sequential(base, [7, 3], epochs=3, repetitions=5, cfg=cfg)
    elapsed = time.perf_counter() - t0
    for i, token in enumerate([7, 3]):
        manual = base(i + 1)
        sequence = repeated_sequences([[token]], 5)
        for _ in range(3):
            manual.step(sequence, 1)
        contexts, _ = run_contexts(manual.block, manual.token_input, sequence, grad=False)
        assert rows[i]["final_loss"] == pytest.approx(per_sequence_loss(contexts, 1).item(), rel=1e-5)
        assert torch.allclose(fixed[i], contexts[0, -1], atol=1e-6)
    assert 0 <= rows[0]["seconds"] and rows[0]["seconds"] + rows[1]["seconds"] <= elapsed


def test_evaluate_is_each_sequences_loss_and_last_context_without_a_graph():
    cfg = RepetitionConfig(repetitions=4)
    trainer = make_trainer_factory(MODEL, torch.randn(20, 4), cfg, seed=0, device=torch.device("cpu"))(0)
    sequences = repeated_sequences([(1, 2), (3, 5)], 4)
    loss, fixed = trainer.evaluate(sequences, 2)
    assert not loss.requires_grad and not fixed.requires_grad
    for p, seq in enumerate(sequences):
        hand = _hand_metrics(trainer.block, trainer.token_input, seq[None], 2)
        assert loss[p].item() == pytest.approx(hand["convergence_loss"], rel=1e-5)
    contexts, _ = run_contexts(trainer.block, trainer.token_input, sequences)  # default: with a graph, for training
    assert contexts.requires_grad and torch.allclose(fixed, contexts[:, -1].detach(), atol=1e-6)


def test_trainer_factory_builds_the_configured_blocks_seeded_by_seed_plus_k():
    from newllm.model import TokenBlock

    model = {"context_dim": 6, "num_input_tokens": 2, "num_layers": 2, "ffn_layers": 2, "activation": "relu"}
    embeddings = torch.randn(20, 4)
    trainer = make_trainer_factory(model, embeddings, RepetitionConfig(), seed=5, device=torch.device("cpu"))(3)
    torch.manual_seed(8)
    block = ContextBlock(ModelConfig(6, 4, num_input_tokens=2, num_layers=2, ffn_layers=2, activation="relu"))
    token_block = TokenBlock(ModelConfig(6, 4, num_input_tokens=2, num_layers=2, ffn_layers=2, activation="relu"))
    init_weights(block)
    init_weights(token_block)
    assert trainer.token_input.output_dim == 8
    for mine, theirs in ((trainer.block, block), (trainer.token_block, token_block)):
        assert str(mine) == str(theirs)  # layers, FFN depth and activation
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name


def test_train_stages_reports_each_row_to_the_callback_with_its_time():
    import time

    cfg = RepetitionConfig(repetitions=4, learning_rate=1e-2)
    trainer = make_trainer_factory(MODEL, torch.randn(20, 4), cfg, seed=0, device=torch.device("cpu"))(0)
    seen = []
    t0 = time.perf_counter()
    rows = train_stages(trainer, {1: [(1,), (2,)]}, repetitions=4, epochs_per_stage=3, batch_size=1, on_epoch=seen.append)
    elapsed = time.perf_counter() - t0
    assert seen == rows and sum(r["seconds"] for r in rows) <= elapsed and all(r["seconds"] > 0 for r in rows)


def test_config_from_dict_ignores_unknown_keys_and_none():
    cfg = RepetitionConfig.from_dict({"repetitions": 3, "learning_rate": None, "ce_weight": 0.5, "not_a_field": 1})
    assert cfg == RepetitionConfig(repetitions=3, ce_weight=0.5)
