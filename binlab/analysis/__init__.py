"""binlab.analysis: numbers about a network, without plots.

    binlab.analysis.costs       parameters, memory and FLOPs of a BERT config at any bit-width (chapter 1)
    binlab.analysis.landscape   loss surfaces around the weights and top Hessian eigenvalues (chapter 3)
    binlab.analysis.agreement   how far a student's hidden states are from its teacher's, layer by layer
    binlab.analysis.entropy     the entropy of binarized attention maps: sign(softmax), thresholds, BiT, bool (chapter 6)
"""
