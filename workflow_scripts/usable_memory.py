"""Rule usable_memory: test loss of a cvfp run's trained TokenBlock when its contexts see
only the last k tokens (docs/method.md §10; newllm.usable_memory)."""

from newllm.io import write_json
from newllm.phase2 import Phase2Config
from newllm.pipeline import build_model, load_context_cache, load_stream, run_precision, start_run
from newllm.runtime import load_weights
from newllm.script import run_script
from newllm.usable_memory import history_curve, history_needed


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    context_block, token_block = build_model(params, token_input, device, context_weights=smk.input.context_weights)
    token_block.load_state_dict(load_weights(smk.input.token_weights, device))
    context_block.eval(), token_block.eval()
    cfg, precision = Phase2Config.from_dict(params["phase2"], device), run_precision(params, device, token_input.embed_dim)
    stream = load_stream(smk.input.test, device)
    cache = load_context_cache(smk.input.test_cache, device)
    rows = history_curve(
        context_block,
        token_block,
        token_input,
        stream,
        cache,
        cfg,
        batch_size=params["phase1"]["batch_size"],
        precision=precision,
    )
    needed = history_needed(rows)
    write_json(smk.output[0], {"run": params["run"], "curve": rows, **needed})
    log.info(
        "%s: history gain %.4f nats; 90 %% at k=%s, 99 %% at k=%s", name, needed["history_gain"], needed["k90"], needed["k99"]
    )
    for row in rows:
        log.info("k=%s: test loss %.4f (PPL %.1f)", row["history"], row["loss"], row["ppl"])


if __name__ == "__main__":
    run_script(main, globals())
