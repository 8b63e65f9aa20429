"""plots/results.md: every variant's scores as a table, the depth sweep, links to the figures."""

from __future__ import annotations

import math

import pandas as pd

from gradflow.figures import FIGURES, run_summary


def fmt(value, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    return format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (DataFrame.to_markdown needs `tabulate`, not a dependency here)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(runs: dict, sweep: pd.DataFrame, reference_test: dict) -> str:
    header = ["variant", "status", "data source", "device", "epochs", "best epoch",
              "final train loss", "final train acc", "best val acc", "test acc", "test loss",
              "params", "s/epoch", "grad ratio init", "grad ratio final"]
    rows = []
    for name, run in runs.items():
        m = run["metrics"]
        final, best, test = m.get("final") or {}, m.get("best") or {}, m.get("test") or {}
        ratio = m.get("grad_ratio_first_last_conv") or {}
        epochs = f"{m.get('epochs_run', '?')}/{m.get('epochs', '?')}"
        status = m.get("status", "?")
        if m.get("diverged_epoch"):
            status += f" (epoch {m['diverged_epoch']})"
        rows.append([name, status, str(m.get("data_source")), str(m.get("device")), epochs,
                     str(m.get("best_epoch")), fmt(final.get("train_loss")), fmt(final.get("train_acc")),
                     fmt(best.get("val_acc")), fmt(test.get("acc")), fmt(test.get("loss")),
                     fmt(m.get("params"), ",d"), fmt(m.get("seconds_per_epoch"), ".1f"),
                     fmt(ratio.get("init"), ".2e"), fmt(ratio.get("final"), ".2e")])
    summary = run_summary([r["metrics"] for r in runs.values()])
    parts = ["# Results", "",
             f"Every variant in params.yaml that has metrics ({summary}). Epochs are "
             "run/configured; the test scores use the best-validation weights; grad ratio is "
             "mean |grad| of the first conv over the last conv at the first and last sampled "
             "training step.", "",
             markdown_table(header, rows) if rows else "_No variant has metrics yet._", ""]
    if reference_test:
        parts += ["Reference (the coursework's shipped results, CIFAR-100, 100 epochs; "
                  "see reference/README.md):", "",
                  markdown_table(["reference", "test acc", "test loss"],
                                 [[f"reference {n} (coursework)", fmt(t.get("test_acc")),
                                   fmt(t.get("test_loss"))] for n, t in reference_test.items()]), ""]
    parts += ["## Depth sweep", ""]
    if sweep.empty:
        parts += ["_No sweep results (metrics/sweep/ is empty)._", ""]
    else:
        parts += [markdown_table(
            ["depth", "fix", "status", "final train loss", "final val acc", "grad ratio init",
             "grad ratio final"],
            [[str(r.depth), str(r.fix), str(r.status), fmt(r.final_train_loss), fmt(r.final_val_acc),
              fmt(r.grad_ratio_init, ".2e"), fmt(r.grad_ratio_final, ".2e")]
             for r in sweep.itertuples()]), ""]
    parts += ["## Figures", ""]
    parts += [f"- [{title}]({name})" for name, title in FIGURES.items()]
    parts += [""] + [f"![{title}]({name})" for name, title in FIGURES.items()] + [""]
    return "\n".join(parts)
