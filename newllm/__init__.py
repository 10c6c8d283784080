"""New-LLM: a recurrent language model trained by context-vector fixed-point learning.

The package holds all logic of the pipeline; ``workflow_scripts/`` are thin Snakemake
entry points around it.  The method is docs/method.md.  Modules:

- :mod:`newllm.study`      the model catalogue (register_model) and run identity (RunId)
- :mod:`newllm.tokenizer`  GPT-2 BPE from local files or the hub (§2)
- :mod:`newllm.data`       corpus loading, token caches, splits, seeded training sets (§2)
- :mod:`newllm.corpus_check` a local corpus checked up front (file, line, field)
- :mod:`newllm.embeddings` frozen token embeddings: bigram / word2vec / gpt2 / random (§2)
- :mod:`newllm.bigram`     the bigram stand-in embeddings and the head fit that scores any source (§2)
- :mod:`newllm.model`      ContextBlock, TokenBlock, token input (§3)
- :mod:`newllm.head`       the frozen tied head: fused cross-entropy, tie-aware accuracy (§3.4)
- :mod:`newllm.losses`     CVFP and diversity losses (§4)
- :mod:`newllm.metrics`    Effective Rank, convergence rate, perplexity (§4-5, §7)
- :mod:`newllm.solvers`    fixed-point solvers of the context recurrence, a registry (§4, §6)
- :mod:`newllm.phase1`     CVFP training of the ContextBlock (§4)
- :mod:`newllm.context_cache` every token's context under a frozen ContextBlock, truncated histories (§6, §10)
- :mod:`newllm.producers`  every context source behind one call: cvfp, reset, LSTM states (§6, §10)
- :mod:`newllm.trainer`    the one next-token training loop of Phase 2 and the baselines (§7)
- :mod:`newllm.phase2`     the TokenBlock on cached contexts, plugged into the trainer (§7)
- :mod:`newllm.baselines`  Kneser-Ney n-grams, LSTM, minGRU and Transformer LMs (§10)
- :mod:`newllm.flops`      one training-FLOPs formula for every model (§10.4)
- :mod:`newllm.training`   stop rules, resumable batches, the shared result and error types
- :mod:`newllm.checkpoint` one TrainState checkpoint (safetensors) for every trainer
- :mod:`newllm.diagnostics` collapse check, CVFP convergence check, memory probe (§5)
- :mod:`newllm.usable_memory` the trained TokenBlock on contexts of the last k tokens (§10.3)
- :mod:`newllm.uncertainty` hierarchical bootstrap over seeds and conversations (§11)
- :mod:`newllm.paired_gains` paired differences, gains over the head, the study's bootstrap (§11)
- :mod:`newllm.scaling`    power-law and loss-form fits, AICc, extrapolations (§8)
- :mod:`newllm.analysis`   runs table, windows, comparisons, prediction, findings, verdict (§8)
- :mod:`newllm.plots`      report figures, drawn from tables alone
- :mod:`newllm.config`, :mod:`newllm.schema_docs`  config checks (DAG time), config/README.md
- :mod:`newllm.provenance` code hashes per rule, each study's data provenance (DAG time)
- :mod:`newllm.hub`        hub downloads by local rules; every other job runs offline
- :mod:`newllm.pipeline`, :mod:`newllm.runtime`, :mod:`newllm.io`, :mod:`newllm.script`
  I/O at the edges: loading, device, seeding, provenance, atomic writes, rule failures
- :mod:`newllm.cli`        ``newllm-fit``: the scaling fit on any external CSV

Only :mod:`newllm.study`, :mod:`newllm.config`, :mod:`newllm.provenance`,
:mod:`newllm.hub`, :mod:`newllm.tokenizer`, :mod:`newllm.data`, :mod:`newllm.io` and
:mod:`newllm.scaling` are imported at DAG-construction time; none of them imports torch.
Every rule passes the hash of the syntax of the modules its script imports (docstrings and
comments excluded) as ``params: code``: a code edit reruns exactly the jobs that use it.
"""

__version__ = "0.1.0"
