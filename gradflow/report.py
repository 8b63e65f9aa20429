"""plots/results.md: every variant's verdict and scores, the reference's verdicts beside them, a
summary generated from both, the depth sweep, and links to the figures."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from gradflow import params as P
from gradflow.figures import FIGURES, run_summary
from gradflow.fixes import switched_on
from gradflow.model import LOGITS, is_conv
from gradflow.reference import COURSEWORK, PublicRun
from gradflow.theory import SHARE_RESOLUTION
from gradflow.verdict import CHANCE_LOSS, RULE, STUCK_LOSS_BAND, VERDICTS, learns_threshold, rule_numbers


def fmt(value, spec: str = ".4f") -> str:
    """value in `spec`; a float of a million or more (a diverged loss: 1.7e+21, not 36 digits)
    in three significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    if isinstance(value, float) and abs(value) >= 1e6:
        return format(value, ".3g")
    return format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (DataFrame.to_markdown needs `tabulate`, not a dependency here)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def reference_verdict(published: list[PublicRun], epochs: int) -> str:
    """What the published runs of one variant say at our run's budget: our verdict rule on
    their first `epochs` epochs, and whose runs they are."""
    words = [r.verdict_after(epochs) for r in published]
    public = sum(r.source != COURSEWORK for r in published)
    who = " + ".join(part for part in (
        "coursework run" if len(published) > public else "",
        f"{public} public run{'s' if public != 1 else ''}" if public else "") if part)
    budget = f"after {epochs} epoch{'s' if epochs != 1 else ''}"
    top = max(dict.fromkeys(words), key=words.count)  # a tie: the first run's (coursework's) word
    if words.count(top) == len(words):
        return f"{top} ({who}, {budget})"
    return f"{top} in {words.count(top)} of {len(words)} ({who}, {budget})"


def expected_verdict(name: str, variant: P.Variant | None, published: dict[str, list[PublicRun]],
                     epochs: int) -> str:
    """What the reference says this variant should do: its published CIFAR-100 runs judged at
    our run's budget where there are any, and for a VGG_38 with one of the coursework's four
    fixes (its papers: batch norm, residual, dense connections, deep supervision) its
    conclusion that they make it train. He initialisation is not one of them: nothing ("–");
    benchmarks/he_init.md measures it."""
    if published.get(name):
        return reference_verdict(published[name], epochs)
    if variant is not None and variant.depth > 8 and coursework_fix(variant):
        return "learns (coursework's conclusion)"
    return "–"


def coursework_fix(v: P.Variant) -> bool:
    """Whether a variant switches on one of the coursework's fixes (gradflow/fixes.py)."""
    return any(f.coursework for f in switched_on(v))


def ratio_text(log10_ratio) -> str:
    """A log10 ratio as the ratio itself (-13.6 -> 2.5e-14); n/a for None or NaN."""
    if log10_ratio is None or (isinstance(log10_ratio, float) and math.isnan(log10_ratio)):
        return "n/a"
    return f"{10.0 ** log10_ratio:.1e}"


def share_text(share) -> str:
    """A signal share (0..1) with two significant digits; n/a before the gradients stage ran."""
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "n/a"
    return f"{share:.2g}"


def expected_word(expected: str) -> str | None:
    """The verdict a reference cell states: "learns" of "learns in 3 of 4 (4 public runs, ...)"."""
    return next((word for word in VERDICTS if expected.startswith(word)), None)


def story(runs: dict, expected: dict[str, str]) -> list[str]:
    """The summary under the table: sentences generated from the verdicts and ratios only."""
    lines = []
    by_verdict: dict[str, list[str]] = {}
    for name, run in runs.items():
        by_verdict.setdefault(run["metrics"].get("verdict", "n/a"), []).append(name)
    for word in VERDICTS:
        if by_verdict.get(word):
            lines.append(f"- **{word}**: {', '.join(by_verdict[word])}")
    for name, run in runs.items():
        m = run["metrics"]
        if m.get("log10_grad_ratio_init") is not None:
            lines.append(f"- {name}: at initialisation its first conv gets "
                         f"{ratio_text(m['log10_grad_ratio_init'])} of its last conv's mean |grad| "
                         f"({ratio_text(m.get('log10_grad_ratio_final'))} at the last sampled step); "
                         f"verdict: {m.get('verdict', 'n/a')}")
    # Compared on the finding, learns or not: after one epoch the coursework's own VGG_38 is
    # "undecided" (its first epoch's mean loss still holds the initial transient), ours "stuck".
    judged = [n for n in runs if expected.get(n, "–") != "–"]
    same = [n for n in judged if (expected_word(expected[n]) == "learns")
            == (runs[n]["metrics"].get("verdict") == "learns")]
    if judged:
        differ = [n for n in judged if n not in same]
        lines.append(f"- Variants that learn exactly where the reference's do: {len(same)} of {len(judged)}"
                     + (f" (differ: {', '.join(differ)})" if differ else ""))
    return lines


COLLAPSED = 1e-6  # a logits' signal share below this: every image gets (nearly) the same logits
VANISHED = 1e-6  # a first/last conv gradient ratio below this: the first layers get no gradient


def span(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{format(low, spec)}-{format(high, spec)}"


def why_different(name: str, m: dict, expected: str, published: list[PublicRun]) -> str:
    """Why this run's verdict is not its reference's, from the run's own numbers: the rule's
    reading of both, then which of its measurements explains its side."""
    ours, epochs, n = m.get("verdict"), int(m.get("epochs_run") or 1), m.get("val_images")
    bar = learns_threshold(n, epochs) if n else None
    loss, acc = m.get("final_train_loss"), m.get("best_val_acc")
    text = (f"- {name}: {ours} here (final training loss {fmt(loss)}, {abs(loss - CHANCE_LOSS):.3f} from "
            f"ln 100; best validation accuracy {fmt(acc, '.3f')}" if loss is not None and acc is not None
            else f"- {name}: {ours} here (")
    text += f", where \"learns\" needs {bar:.4f})" if bar else ")"
    if published:
        heads = [r.curves.head(epochs) for r in published]
        their_loss = [float(h["train_loss"].iloc[-1]) for h in heads]
        said = expected.rsplit(", after", 1)[0]  # "undecided (coursework run"
        text += (f"; the published runs after {epochs} epoch{'s' if epochs != 1 else ''} say {said}: "
                 f"training loss {span(their_loss, '.3f')}, best validation accuracy "
                 f"{span([float(h['val_acc'].max()) for h in heads], '.3f')})")
    else:
        text += f"; the reference says {expected}"
    ratio, share0, share1 = m.get("log10_grad_ratio_init"), m.get("signal_share_init"), m.get("signal_share_final")
    if ours == "learns":
        return text + f". Its best validation accuracy clears the bar; theirs {'does' if expected.startswith('learns') else 'does not'} at this budget."
    causes = []
    if ratio is not None and 10.0 ** ratio < VANISHED:
        causes.append(f"its first conv got {ratio_text(ratio)} of its last conv's gradient at the first "
                      f"training step: the gradient vanished on the way down")
    if share1 is not None and share1 < COLLAPSED:
        causes.append(f"the logits' signal share went from {share_text(share0)} at initialisation to "
                      f"{share_text(share1)} at the end: every image got the same logits, so the loss "
                      f"could not fall below ln 100 (the forward signal collapsed)")
    if not causes:
        causes.append(f"its gradients reach the first layers (first/last conv {ratio_text(ratio)}) and its "
                      f"logits depend on the image (signal share {share_text(share1)} at the end), so "
                      f"nothing is broken: it has not learned enough yet at this budget")
    if ours == "stuck at chance" and expected.startswith("undecided") and published:
        gap = min(abs(x - CHANCE_LOSS) for x in their_loss)
        causes.append(f"the published runs' mean training loss in epoch {epochs} is {gap:.3f} or more from "
                      f"ln 100, outside the rule's {STUCK_LOSS_BAND} for \"stuck\", and their accuracy "
                      f"is not above chance: the rule says undecided there, not learns")
    causes[0] = causes[0][0].upper() + causes[0][1:]
    return text + ". " + "; ".join(causes) + "."


def why_story(runs: dict, expected: dict[str, str], published: dict[str, list[PublicRun]]) -> list[str]:
    """A sentence for every variant whose verdict differs from its reference's."""
    return [why_different(name, run["metrics"], expected[name], published.get(name, []))
            for name, run in runs.items()
            if expected.get(name, "–") != "–" and run["metrics"].get("verdict")
            and expected_word(expected[name]) != run["metrics"]["verdict"]]


def signal_rows(runs: dict) -> list[list[str]]:
    """Per variant, from its probe table: the signal share of the last conv and of the logits at
    initialisation and at the last snapshot, the verdict, and where the mean-field prediction
    resolves it, the range of measured / predicted over the layers at initialisation."""
    rows = []
    for name, run in runs.items():
        flow = run["flow"]
        if flow.empty or "signal_share" not in flow:
            continue
        flow = flow[~flow["layer"].str.endswith("_bias")]
        convs = flow[flow["layer"].map(is_conv)]
        logits = flow[flow["layer"] == LOGITS]
        last_epoch = int(flow["epoch"].max())

        def at(table, epoch):
            values = table[table["epoch"] == epoch]["signal_share"]
            return f"{values.iloc[-1]:.2g}" if len(values) and pd.notna(values.iloc[-1]) else "n/a"
        init = flow[(flow["epoch"] == 0) & flow["predicted_signal_share"].notna()
                    & (flow["predicted_signal_share"] > 0) & (flow["signal_share"] > 0)]
        factor = init["signal_share"] / init["predicted_signal_share"]
        at_init = flow[flow["epoch"] == 0]
        if len(factor):
            spread = f"{factor.min():.2g} – {factor.max():.2g} ({len(factor)} layers)"
        elif at_init["predicted_mean_abs_grad"].isna().all():
            spread = "no mean-field form"
        else:
            spread = "below the prediction's resolution"
        rows.append([name, run["metrics"].get("verdict", "?"), at(convs, 0), at(convs, last_epoch),
                     at(logits, 0), at(logits, last_epoch), str(last_epoch), spread])
    return rows


def signal_story(runs: dict) -> list[str]:
    """One sentence per verdict: the range of the logits' signal share at the end, from the run."""
    by_verdict: dict[str, list[tuple[str, float]]] = {}
    for name, run in runs.items():
        share = run["metrics"].get("signal_share_final")
        if share is not None and run["metrics"].get("verdict"):
            by_verdict.setdefault(run["metrics"]["verdict"], []).append((name, share))
    lines = []
    for v in VERDICTS:
        if v in by_verdict:
            shares = [s for _, s in by_verdict[v]]
            names = ", ".join(n for n, _ in by_verdict[v])
            lines.append(f"- {v} ({names}): the logits' signal share at the end is "
                         + (f"{shares[0]:.2g}" if len(shares) == 1 else f"{min(shares):.2g} to {max(shares):.2g}")
                         + ".")
    return lines


def differences(v: P.Variant, plain: P.Variant) -> list[str]:
    """`key value` for every field of v that differs from plain (None: the train section's)."""
    return [f"{f.name} {getattr(v, f.name)}" for f in dataclasses.fields(v)
            if getattr(v, f.name) is not None and getattr(v, f.name) != getattr(plain, f.name)]


def controls_story(runs: dict, variants: dict[str, P.Variant]) -> list[str]:
    """The variants that test the explanation rather than fix the design (the same convs and no
    fix switch, but another initialisation or optimizer: VGG_38_HE, VGG_38_EPS, VGG_38_SGD), each
    beside the plain variant of its depth in this run: did its gradients reach the first layers,
    did the logits come to depend on the image, and did it learn? Numbers from the run only."""
    plains = {v.depth: name for name, v in variants.items() if name in runs
              and not differences(v, P.Variant(depth=v.depth))}
    lines = []
    for name, v in variants.items():
        plain = plains.get(v.depth)
        if name not in runs or plain is None or name == plain or coursework_fix(v):  # a fix, not a control
            continue
        m, pm = runs[name]["metrics"], runs[plain]["metrics"]
        line = (f"- {name} ({', '.join(differences(v, variants[plain]))}): grad ratio at init "
                f"{ratio_text(m.get('log10_grad_ratio_init'))}, at the end "
                f"{ratio_text(m.get('log10_grad_ratio_final'))} ({plain}: "
                f"{ratio_text(pm.get('log10_grad_ratio_init'))}, {ratio_text(pm.get('log10_grad_ratio_final'))}); "
                f"logits' signal share at init {share_text(m.get('signal_share_init'))}, at the end "
                f"{share_text(m.get('signal_share_final'))} ({plain}: {share_text(pm.get('signal_share_init'))}, "
                f"{share_text(pm.get('signal_share_final'))}); verdict: {m.get('verdict', 'n/a')}.")
        ratio, plain_ratio = m.get("log10_grad_ratio_final"), pm.get("log10_grad_ratio_final")
        share = m.get("signal_share_final")
        if ratio is not None and plain_ratio is not None and ratio - plain_ratio >= 2 and m.get("verdict") != "learns":
            line += (f" At the end its first/last gradient ratio was {10 ** (ratio - plain_ratio):.0e} "
                     f"times {plain}'s, and it did not learn")
            line += (f": its logits stayed nearly the same for every image (share {share:.1g})."
                     if share is not None and share < 1e-6 else ".")
        lines.append(line)
    return lines


def theory_rows(runs: dict) -> list[list[str]]:
    """Per variant at initialisation, on the probe batch: the mean-field prediction's
    first/last conv ratio beside the measured one, and the range of measured / predicted
    mean |grad| over its layers."""
    rows = []
    for name, run in runs.items():
        flow = run["flow"]
        if flow.empty or "predicted_mean_abs_grad" not in flow:
            continue
        init = flow[flow["epoch"] == 0]
        convs = init[init["layer"].map(is_conv)]
        if len(convs) < 2:
            continue
        measured = convs["mean_abs_grad"].iloc[0] / convs["mean_abs_grad"].iloc[-1]
        if init["predicted_mean_abs_grad"].isna().all():
            rows.append([name, "no mean-field form", f"{measured:.1e}", "–"])
            continue
        predicted = convs["predicted_mean_abs_grad"].iloc[0] / convs["predicted_mean_abs_grad"].iloc[-1]
        both = init.dropna(subset=["predicted_mean_abs_grad"])
        both = both[(both["mean_abs_grad"] > 0) & (both["predicted_mean_abs_grad"] > 0)]
        factor = both["mean_abs_grad"] / both["predicted_mean_abs_grad"]
        rows.append([name, f"{predicted:.1e}", f"{measured:.1e}",
                     f"{factor.min():.2g} – {factor.max():.2g} ({len(factor)} layers)"])
    return rows


STAND_IN = ("Data: the synthetic stand-in (gradflow.data.synthetic), not CIFAR-100. Its learning "
            "curves are calibrated against published CIFAR-100 runs of the same recipe "
            "(reference/README.md) for VGG_08, VGG_38, VGG_38_BN, VGG_38_BN_RC and VGG_38_RC over "
            "epochs 1-3; how well, variant by variant and epoch by epoch: benchmarks/calibration.md "
            "(benchmarks/calibrate.py). Other public runs, not used to calibrate, judge it. Other "
            "variants and later epochs are not calibrated.")


def results_markdown(runs: dict, sweep: pd.DataFrame, published: dict[str, list[PublicRun]],
                     reference_test: dict, variants: dict[str, P.Variant]) -> str:
    """results.md: the headline table, the summary, the reference's numbers, theory and
    measurement, the forward signal, the controls, the depth sweep and the figures, in order;
    a section with nothing to show is left out (the headline and the sweep say so instead)."""
    expected = {name: expected_verdict(name, variants.get(name), published,
                                       int(run["metrics"].get("epochs_run") or 1))
                for name, run in runs.items()}
    sections = [headline_section(runs, expected), summary_section(runs, expected, published),
                reference_section(reference_test, published), theory_section(runs), signal_section(runs),
                controls_section(runs, variants), sweep_section(sweep), figures_section()]
    return "\n".join(line for section in sections for line in section)


HEADLINE_COLUMNS = ["variant", "verdict", "reference", "final train loss", "best val acc", "test acc",
                    "test loss", "epochs", "best epoch", "params", "grad ratio at init (training)", "at end",
                    "signal share at init (probe)", "share at end"]


def headline_row(name: str, m: dict, expected: str) -> list[str]:
    """A variant's row of the headline table, from its metrics."""
    epochs = f"{m.get('epochs_run', '?')}/{m.get('epochs', '?')}"
    verdict_text = m.get("verdict", "?")
    if m.get("diverged_epoch"):
        verdict_text += f" (epoch {m['diverged_epoch']})"
    return [name, verdict_text, expected, fmt(m.get("final_train_loss")),
            fmt(m.get("best_val_acc"), ".3f"), fmt(m.get("test_acc"), ".3f"),
            fmt(m.get("test_loss")), epochs, str(m.get("best_epoch")),
            fmt(m.get("params"), ",d"), ratio_text(m.get("log10_grad_ratio_init")),
            ratio_text(m.get("log10_grad_ratio_final")), share_text(m.get("signal_share_init")),
            share_text(m.get("signal_share_final"))]


def headline_section(runs: dict, expected: dict[str, str]) -> list[str]:
    """# Results: what the columns mean, a row per variant, the data and the verdict rule."""
    rows = [headline_row(name, run["metrics"], expected[name]) for name, run in runs.items()]
    summary = run_summary([r["metrics"] for r in runs.values()])
    parts = ["# Results", "",
             f"Every variant in params.yaml that has metrics ({summary}). Epochs are "
             "run/configured; the test scores use the best-validation weights; grad ratio "
             "(training) is mean |grad| of the first conv over the last conv at the first and last "
             "sampled training step, on that step's training batch (the training capture); the "
             "theory table below measures the same ratio on the probe (fixed validation images, "
             "the initial weights), so the two differ a little; signal share is the part of the "
             "logits' second moment that "
             "depends on the image (variance across the probe images over the total, per logit, "
             "averaged; float64: gradflow/probe.py), at the first and last probed snapshot. "
             "Timings are not here (they differ on every run): see dvclive/<variant>/timings.json.",
             "", markdown_table(HEADLINE_COLUMNS, rows) if rows else "_No variant has metrics yet._", "",
             *([STAND_IN, ""] if any(r["metrics"].get("data_source") == "synthetic" for r in runs.values()) else []),
             f"Verdict rule (gradflow/verdict.py): {RULE}. The reference column judges the "
             "published CIFAR-100 runs of the variant (the coursework's own, students' public runs "
             "of the same recipe: reference/README.md) by the same rule after as many epochs as "
             "this run had; for a fixed variant without one it gives the coursework's conclusion.", ""]
    sizes = sorted({(m["val_images"], m["epochs_run"]) for m in (r["metrics"] for r in runs.values())
                    if m.get("val_images") and m.get("epochs_run")})
    return parts + [f"- The rule's numbers in this run: {rule_numbers(n, e)}." for n, e in sizes]


def summary_section(runs: dict, expected: dict[str, str], published: dict[str, list[PublicRun]]) -> list[str]:
    """## Summary, then where a verdict differs from its reference and why (if one does)."""
    parts = ["", "## Summary", ""] + (story(runs, expected) or ["_Nothing to summarise yet._"]) + [""]
    why = why_story(runs, expected, published)
    if why:
        parts += ["## Where a verdict differs from its reference, and why", ""] + why + [""]
    return parts


def reference_section(reference_test: dict, published: dict[str, list[PublicRun]]) -> list[str]:
    """The coursework's shipped test scores, with the verdict its curves get by the rule."""
    if not reference_test:
        return []
    coursework = {n: rs[0] for n, rs in published.items() if rs and rs[0].source == COURSEWORK}
    return ["Reference (the coursework's shipped results, CIFAR-100, 100 epochs; "
            "see reference/README.md):", "",
            markdown_table(["reference", "verdict", "test acc", "test loss"],
                           [[f"reference {n} (coursework)",
                             coursework[n].verdict_after(len(coursework[n].curves))
                             if n in coursework else "n/a",
                             fmt(t.get("test_acc")), fmt(t.get("test_loss"))]
                            for n, t in reference_test.items()]), ""]


def theory_section(runs: dict) -> list[str]:
    theory = theory_rows(runs)
    if not theory:
        return []
    return ["## Theory beside measurement, at initialisation", "",
            "The mean-field prediction (gradflow/theory.py: second moments propagated through "
            "conv, bias, leaky ReLU, pooling and BN from the architecture, its initialisation "
            "and the probe images' covariance) against the probe batch's measurement.", "",
            markdown_table(["variant", "predicted first/last conv", "measured (probe)",
                            "measured / predicted mean abs grad, per layer"], theory), ""]


def signal_section(runs: dict) -> list[str]:
    signal = signal_rows(runs)
    if not signal:
        return []
    return ["## The forward signal", "",
            "Signal share (gradflow/probe.py): the part of a layer's output that depends on "
            "the image, per channel the variance across the probe images over the total second "
            "moment, averaged over channels, in float64. 0: every image gives the same output; "
            "the loss cannot fall below ln 100 then, whatever the gradients do. Measured / "
            "predicted: the mean-field form of the same share (gradflow/theory.py), at "
            f"initialisation, over the layers where it resolves (a share below "
            f"{SHARE_RESOLUTION:.0e} is lost to float64 cancellation in 1 - cross / same).", "",
            markdown_table(["variant", "verdict", "last conv at init", "at end", "logits at init",
                            "logits at end", "end epoch", "measured / predicted, per layer"], signal), "",
            *signal_story(runs), ""]


def controls_section(runs: dict, variants: dict[str, P.Variant]) -> list[str]:
    controls = controls_story(runs, variants)
    if not controls:
        return []
    return ["## The controls: is it the gradients or the signal?", "",
            "These variants keep the plain design and change only the initialisation or the "
            "optimizer (Adam's eps, SGD), so they test the explanation rather than fix the "
            "design: a recovered gradient ratio without a recovered signal share, and no "
            "learning, says the vanishing gradient is not the whole story.", "", *controls, ""]


def sweep_section(sweep: pd.DataFrame) -> list[str]:
    if sweep.empty:
        return ["## Depth sweep", "", "_No sweep results (metrics/sweep/ is empty)._", ""]
    return ["## Depth sweep", "", markdown_table(
        ["depth", "fix", "verdict", "final train loss", "best val acc", "grad ratio at init",
         "predicted", "at end"],
        [[str(r.depth), str(r.fix), str(r.verdict), fmt(r.final_train_loss), fmt(r.best_val_acc, ".3f"),
          ratio_text(r.log10_grad_ratio_init), ratio_text(r.log10_grad_ratio_predicted),
          ratio_text(r.log10_grad_ratio_final)]
         for r in sweep.itertuples()]), ""]


def figures_section() -> list[str]:
    return (["## Figures", ""] + [f"- [{title}]({name})" for name, title in FIGURES.items()]
            + [""] + [f"![{title}]({name})" for name, title in FIGURES.items()] + [""])
