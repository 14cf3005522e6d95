"""binlab.quant: what turns a float network into a binarized one (chapter 2).

    binlab.quant.quantizers   every quantizer: a function with its straight-through gradient and a thin module,
                              registered under its name where it is defined (``get("ste_sign")``)
    binlab.quant.config       QuantConfig: one object that says what is quantized how; the papers' presets
    binlab.quant.layers       QuantLinear and QuantEmbedding, the layers the BERT is built from
"""
