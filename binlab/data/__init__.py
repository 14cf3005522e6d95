"""binlab.data: GLUE tasks and how they are scored.

    binlab.data.glue        task specs, loading from a local TSV folder, the hub or the synthetic generator; batches
    binlab.data.synthetic   a tiny sentiment / acceptability / pair / similarity language, for offline runs and tests
    binlab.data.metrics     accuracy, F1, MCC, Pearson, Spearman, each task's metrics and both GLUE averages
"""
