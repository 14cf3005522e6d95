"""binlab: learn binarized transformers by building one.

The library behind the book in ``book/``: quantizers with straight-through gradients, bit packing and
XNOR/AND-popcount kernels, a readable BERT that binarizes, BinaryBERT, BiBERT and BiT, GLUE data,
a trainer, loss landscapes and the exercise grader.
"""

__version__ = "0.1.0"
