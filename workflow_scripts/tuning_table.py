"""Rule tuning_table: every tuned model's trials and its choice, one row per trial (docs/method.md §10.5)."""

import pandas as pd

from newllm.io import read_json, write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    rows = []
    for path in smk.input.choices:
        choice = read_json(path)
        run = {f"tuning_{key}": value for key, value in choice["tuning_run"].items()}
        rows += [{**row, "chosen": row["trial"] == choice["chosen"]["trial"], **run} for row in choice["trials"]]
    table = pd.DataFrame(rows)
    write_csv(smk.output[0], table)
    log.info("\n%s", table.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
