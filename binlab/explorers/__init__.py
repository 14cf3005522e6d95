"""Interactive figures and chapter figures, one module per chapter topic.

Each explorer is ``make_xxx_explorer(...) -> (ui, fig, controls)`` (see :mod:`binlab.explorers.viz`): the
callback logic lives here, so the tests drive it from Python and the notebooks only display ``ui``.

    bits       chapter 1: costs of BERT at FP32 and 1 bit, the XNOR-popcount explorer, packing, speed
    quant      chapter 2: quantizer transfer curves, weight histograms, the optimal binary scale, STE runs
    landscape  chapter 3: loss surfaces and Hessian eigenvalues drawn, the surface explorer, the model it
               looks at (numbers from binlab.analysis.landscape)
    elastic    chapter 5: BiT's two sets on real MiniLM activations, optimal scales, the elastic explorer, the
               straight-through gradients, all-zero attention rows, scale variants on a tiny BERT
    splitting  chapter 4: ternary weight splitting step by step, the printed coefficient's error, landscapes
               before and after splitting, split-then-fine-tune vs direct binarization on a tiny BERT
    attention  chapter 6: the entropy of binarized attention (sign(softmax), thresholds, BiT, bool) on real SST-2
               sentences, the attention-map explorer, bool(0) and exact zeros, bitwise Bi-Attention, DMD's similarity
               matrices, element-wise vs direction-matching distillation on a tiny BiBERT
    viz        what the chapters share: show_source, markdown tables and sections
    figure     Figure: the FigureWidget every chapter figure is, sized to its cell's width
"""
