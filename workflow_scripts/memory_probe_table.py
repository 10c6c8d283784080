"""Rule memory_probe_table: the memory probe of every run as a table and a decay figure (issue 8 §6)."""

import pandas as pd

from newllm.io import atomic_path, read_json, write_csv
from newllm.runtime import get_logger
from newllm.script import run_script


def main(smk) -> None:
    log = get_logger(smk.log[0])
    rows, curves = [], []
    for path in smk.input.diagnostics:
        diag = read_json(path)
        run, probe = diag["run"], diag["memory_probe"]
        key = {k: run[k] for k in ("model", "variant", "samples", "context_dim", "seed")}
        rows.append(
            {
                **key,
                "lag_below_10pct": probe["lag_below_10pct"],
                "lag_below_1pct": probe["lag_below_1pct"],
                "effect_lag1": probe["effect"][0],
                "max_lag": probe["max_lag"],
                "positions": probe["positions"],
            }
        )
        curves += [
            {**key, "lag": k, "effect": e, "relative": r} for k, e, r in zip(probe["lags"], probe["effect"], probe["relative"])
        ]
    table, curve_table = pd.DataFrame(rows), pd.DataFrame(curves)
    write_csv(smk.output.table, table)
    write_csv(smk.output.curves, curve_table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(curve_table.groupby(["model", "variant", "context_dim"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, ((model, variant, dim), group) in zip(axes[0], groups):
        for samples, run in group.groupby("samples"):
            mean = run.groupby("lag")["relative"].mean()
            ax.semilogy(mean.index, mean.clip(lower=1e-8).values, label=f"{samples} conv.")
        for frac in (0.1, 0.01):
            ax.axhline(frac, color="grey", lw=0.8, ls=":")
        ax.set(title=f"{model} {variant} d_c={dim}", xlabel="lag k (tokens back)", ylabel="‖Δc_i‖ / lag-1 effect")
        ax.legend(fontsize=7)
    fig.tight_layout()
    for path in (smk.output.figure, str(smk.output.figure)[: -len(".png")] + ".svg"):
        with atomic_path(path, path[-4:]) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path[-3:])
    plt.close(fig)
    log.info("\n%s", table.to_string(index=False))


if __name__ == "__main__":
    run_script(main, globals())
