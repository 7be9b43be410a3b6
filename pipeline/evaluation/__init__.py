"""Evaluation against a from-scratch baseline: metrics, label efficiency, verdict, interpretation, report.

    metrics.py           accuracy, macro-F1, per-class P/R/F1, confusion (scikit-learn), ECE
    intervals.py         intervals that are accuracies (over seeds, Wilson), the paired McNemar comparison
    references.py        trivial references (majority class, pixel logistic regression) and failed training
    verdict.py           positive / no_gain / negative / inconclusive per comparison and overall (the documented rule)
    label_efficiency.py  budgets x seeds on the same subsets, both sides at their best; labels saved, time saved
    scratch_curve.py     the scratch side (the baseline stage): every curve draw's converged run and the baseline's,
                         side by side in one pool
    scratch_baseline.py  the baseline's run on every label, as a job of that pool (writes the baseline model)
    evaluate.py          the whole evaluation in named steps (the evaluate stage's one call), and its files
    comparison.py        its pieces: embeddings, the curve's transfer side, paired tests, metrics.json
    assess.py            scores and explanations of one loaded model
    robustness.py        accuracy per corruption and severity
    interpret.py         class ideal inputs, adversarial pairs, FGSM accuracy
    plots.py / outputs.py  PNGs and the CSV tables behind dvc plots
    report.py            the self-contained HTML report (templates/report.html.j2)
    model_card.py        the human model card of the registered model (Markdown + HTML; the card stage)
"""
