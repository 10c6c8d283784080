"""Rule export_contexts: per-layer contexts of every train, dev and test token (docs/method.md §6).

``cache[i] = F(c_{i-1}, x̃_i)`` for every layer with ``c_{-1} = 0``: the ContextBlock's
output *after processing token i*, from one solver for all three splits.  A solve that
does not reach tolerance is redone by the exact sequential recurrence (never fed to
Phase 2 unconverged); the cache metadata records which.  For the ``reset`` context
source (reset_context) the row is ``F(0, x̃_i)`` instead: no history; for ``lm_states``
(lstm_states) the LSTM's hidden state after token i (newllm.producers).
"""

import numpy as np

from newllm.context_cache import fallback_message
from newllm.io import write_json, write_npy
from newllm.metrics import effective_rank
from newllm.pipeline import load_stream, start_run
from newllm.producers import context_producer
from newllm.script import run_script


def main(smk) -> None:
    params, name, log, device, token_input = start_run(smk)
    produce, context_parameters = context_producer(
        smk.params.context, params, token_input, device, smk.input.weights, smk.params.cache
    )
    meta = {
        "run": params["run"],
        "source": smk.params.context,
        "method": smk.params.cache["method"] if smk.params.context in ("phase1", "untrained") else smk.params.context,
        "context_parameters": context_parameters,
        "layout": "[tokens, num_layers, context_dim] float32; row i = every layer's output after processing token i",
    }
    context_dim = params["run"]["context_dim"]
    for split in ("train", "dev", "test"):
        stream = load_stream(smk.input[split], device)
        outputs, info = produce(stream)
        fallback = fallback_message(info)
        if fallback:
            log.warning("%s: %s", split, fallback)
        er = effective_rank(outputs[:, -1], seed=params["seed"])
        info.update(effective_rank=er, effective_rank_pct=100.0 * er / context_dim, tokens=int(stream.shape[0]))
        cache = outputs.cpu().numpy().astype(np.float32)
        write_npy(smk.output[split], cache)
        info["bytes"] = int(cache.nbytes)
        meta[split] = info
        log.info("%s: %s", split, info)
    meta["train_val_er_gap_pct"] = meta["train"]["effective_rank_pct"] - meta["dev"]["effective_rank_pct"]
    write_json(smk.output.meta, meta)


if __name__ == "__main__":
    run_script(main, globals())
