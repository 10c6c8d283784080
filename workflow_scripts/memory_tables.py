"""Rule memory_tables: the perturbation probe and usable memory of every run as tables
(docs/method.md §5.3, §10.3); rule plot_memory draws them."""

from newllm.io import read_json, write_csv
from newllm.runtime import get_logger
from newllm.script import run_script
from newllm.usable_memory import memory_probe_tables, usable_memory_tables


def main(smk) -> None:
    log = get_logger(smk.log[0])
    table, curves = memory_probe_tables([read_json(p) for p in smk.input.diagnostics])
    usable, summary = usable_memory_tables([read_json(p) for p in smk.input.usable])
    for path, frame in ((smk.output.table, table), (smk.output.curves, curves), (smk.output.usable, usable)):
        write_csv(path, frame)
    write_csv(smk.output.usable_summary, summary)
    log.info("memory probe:\n%s\nusable memory:\n%s", table.to_string(index=False), summary.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
