"""Rule repetition_study: staged CVFPT training and the top-K protocols (docs/method.md §9)."""

import numpy as np
import pandas as pd

from newllm.data import read_stream
from newllm.io import write_csv, write_json
from newllm.repetition import (
    RepetitionConfig,
    collapse_check,
    evaluate_round_robin,
    evaluate_sequential,
    frequent_phrases,
    make_trainer_factory,
    summarise_protocol,
    train_stages,
    verdict,
)
from newllm.runtime import get_logger, load_weights, provenance, resolve_device, seed_everything
from newllm.script import run_script


def compare_protocols(factory, tokens, cfg, cfg_dict, log):
    """Top-K single tokens: sequential (a fresh model per token, biased) against round-robin
    (fair).  Returns (token rows, fixed-point distance rows, summary per protocol)."""
    epochs = cfg_dict["topk"]["epochs"]
    rows, summary, distance_rows = [], {}, []
    rr_rows, rr_fixed, _ = evaluate_round_robin(factory, tokens, epochs, cfg.repetitions, cfg)
    seq_rows, seq_fixed = evaluate_sequential(factory, tokens, epochs, cfg.repetitions, cfg)
    for protocol, prot_rows, fixed in (("round_robin", rr_rows, rr_fixed), ("sequential", seq_rows, seq_fixed)):
        rows += [{"protocol": protocol, **r} for r in prot_rows]
        stats = summarise_protocol(prot_rows, cfg.converged_loss)
        collapse = collapse_check(fixed.cpu(), cfg.collapse_threshold)
        distance_rows += [{"protocol": protocol, "distance": d} for d in collapse.pop("distances")]
        summary[protocol] = {**stats, "fixed_point_distances": collapse, "verdict": verdict(stats, collapse)}
        log.info(
            "%s: mean improvement %.1f %%, converged %s (%d already before training), %.3f s/token; "
            "pairwise fixed-point distance min %.2e median %.2e max %.2e -> %s",
            protocol,
            100 * stats["mean_improvement"],
            stats["convergence"],
            stats["converged_before_training"],
            stats["seconds_per_token"],
            collapse["min"],
            collapse["median"],
            collapse["max"],
            summary[protocol]["verdict"],
        )
    return rows, distance_rows, summary


def main(smk) -> None:
    log = get_logger(smk.log[0])
    cfg_dict = smk.params.repetition
    cfg = RepetitionConfig.from_dict(cfg_dict)
    seed = smk.params.seed
    seed_everything(seed, smk.threads)
    device = resolve_device(smk.params.device)
    model_cfg = {**smk.params.model, "context_dim": cfg_dict["context_dim"]}
    embeddings = load_weights(smk.input.embeddings)["embeddings"]
    pool = np.asarray(read_stream(smk.input.pool))
    factory = make_trainer_factory(model_cfg, embeddings, cfg, seed, device)

    # staged training on real phrases of the training pool (stage s: s-token phrases)
    phrases = {s: frequent_phrases(pool, s, cfg_dict["phrases_per_stage"]) for s in range(1, cfg_dict["max_stage"] + 1)}
    log.info("phrases per stage: %s", {s: p[:5] for s, p in phrases.items()})
    stage_rows = train_stages(
        factory(0),
        phrases,
        cfg.repetitions,
        cfg_dict["epochs_per_stage"],
        cfg_dict["batch_size"],
        on_epoch=lambda r: log.info(
            "stage %d epoch %d: convergence loss %.6f, change rate %.4f, cyclic distance %.4f",
            r["stage"],
            r["epoch"],
            r["convergence_loss"],
            r["change_rate"],
            r["cyclic_distance"],
        ),
    )
    write_csv(smk.output.stages, pd.DataFrame(stage_rows))

    topk = cfg_dict["topk"]
    if topk["token_source"] == "first_ids":
        tokens = list(range(topk["k"]))
    else:
        tokens = [p[0] for p in frequent_phrases(pool, 1, topk["k"])]
    rows, distance_rows, summary = compare_protocols(factory, tokens, cfg, cfg_dict, log)
    write_csv(smk.output.tokens, pd.DataFrame(rows))
    write_csv(smk.output.distances, pd.DataFrame(distance_rows))
    write_json(
        smk.output.summary,
        {
            "config": {**cfg_dict, "model": model_cfg},
            "tokens": [int(t) for t in tokens],
            "phrases": {str(s): [list(p) for p in ps] for s, ps in phrases.items()},
            **summary,
            "provenance": provenance(device),
        },
    )


if __name__ == "__main__":
    run_script(main, globals())
