"""New-LLM: a recurrent language model trained by context-vector fixed-point learning.

The package holds all logic of the pipeline; ``workflow_scripts/`` are thin Snakemake
entry points around it.  Modules:

- :mod:`newllm.tokenizer`  GPT-2 BPE from local files or the hub (SPEC §2)
- :mod:`newllm.data`       corpus loading via ``datasets``, token caches, splits (SPEC §2)
- :mod:`newllm.embeddings` frozen token embeddings: bigram / word2vec / gpt2 / random (SPEC §2)
- :mod:`newllm.model`      ContextBlock, TokenBlock, tied head (SPEC §3)
- :mod:`newllm.losses`     CVFP and diversity losses (SPEC §4)
- :mod:`newllm.metrics`    Effective Rank, convergence rate, perplexity (SPEC §4-5, §7)
- :mod:`newllm.solvers`    fixed-point solvers of the context recurrence, a registry (SPEC §4, §6)
- :mod:`newllm.training`   stop rules (early stopping in steps), the shared result and error types
- :mod:`newllm.checkpoint` one TrainState checkpoint (safetensors) for every trainer
- :mod:`newllm.phase1`     CVFP training of the ContextBlock, the context cache (SPEC §4, §6)
- :mod:`newllm.phase2`     TokenBlock training on cached contexts, selected on dev (SPEC §7)
- :mod:`newllm.baselines`  Kneser-Ney n-gram, LSTM and Transformer baselines (issue 9)
- :mod:`newllm.diagnostics` collapse check, CVFP convergence check, memory probe (SPEC §5)
- :mod:`newllm.uncertainty` test-set bootstrap over conversations
- :mod:`newllm.scaling`    power-law and loss-form fits, AIC/BIC, intervals (SPEC §8)
- :mod:`newllm.analysis`   tidy run tables, comparisons, prediction, the generated verdict
- :mod:`newllm.plots`      report figures, drawn from tables alone
- :mod:`newllm.config`     config checks beyond the JSON schema (DAG-construction time)
- :mod:`newllm.provenance` code hashes per rule, each study's data provenance (DAG time)
- :mod:`newllm.hub`        hub downloads by local rules; every other job runs offline
- :mod:`newllm.pipeline`, :mod:`newllm.runtime`, :mod:`newllm.io`  I/O at the edges:
  loading, device, seeding, provenance, atomic writes
- :mod:`newllm.cli`        ``newllm-fit``: the scaling fit on any external CSV

Only :mod:`newllm.config`, :mod:`newllm.provenance`, :mod:`newllm.hub`,
:mod:`newllm.tokenizer`, :mod:`newllm.data`, :mod:`newllm.io` and :mod:`newllm.scaling`
are imported at DAG-construction time; none of them imports torch.  Every rule passes
the content hash of the modules its script imports as ``params: code`` (an edit reruns
exactly the jobs that use the module; this file is imported by all of them).
"""

__version__ = "0.1.0"
