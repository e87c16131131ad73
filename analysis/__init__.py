"""Analysis of tracked runs: tables, figures and reports (``emorl report``).

Reads only what tracking wrote (MLflow runs, their metrics and artifacts; checkpoints for
decompositions and traversals):

- :mod:`analysis.collect`: MLflow -> one tidy pandas table, one row per run;
- :mod:`analysis.aggregate`: group by every key except the seed; mean, std, n, 95% CI; failed runs;
  differences to the full model (Welch, bootstrap, Holm);
- :mod:`analysis.tables`: Tables 1-3 beside the paper's numbers (Markdown, LaTeX, CSV);
- :mod:`analysis.figures`: Figs. 3, 4, 5, 7, 8, 9c-d and 16-21 (PNG and PDF);
- :mod:`analysis.report`: the report folder, logged to MLflow; :mod:`analysis.cli`: ``emorl report``;
- :mod:`analysis.examples`: synthetic runs for examples and tests.

See docs/analysis.md.
"""
