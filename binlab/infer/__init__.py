"""binlab.infer: a W1A1 BERT that really runs in bits: the packed export and the bitwise inference engine.

The fake-quant models of :mod:`binlab.model` keep float32 latent weights and compute every product in float; here
the same network is stored and run as bits::

    binlab.infer.packed    the packed format: config.json (format marker, version) + model.packed.safetensors
                           (uint64 sign bits per binarized matrix, its scales, thresholds, biases; FP where the
                           method keeps it); schema(), load_packed() with its checks, ideal_bytes(), size_report()
    binlab.infer.export    export_packed(model_or_dir, out_dir, fp16=False); ``binlab export``
    binlab.infer.fused     the elementwise work around each product (scale, bias, threshold, pack) in numba
    binlab.infer.engine    PackedBert: the forward pass, every binarized product an XNOR- or AND-popcount
                           GEMM of binlab.kernels
    binlab.infer.predict   ``binlab predict MODEL "sentence" ["second sentence"]``: label, scores, latency
    binlab.infer.agreement the engine against the float64 and float32 fake-quant model on a dev set, each float32
                           disagreement traced to its first flipped bit; ``binlab agreement``

The engine runs the fully binarized presets ``bit`` (BiT: elastic {-alpha, +alpha} / {0, alpha} activations,
softmax then {0, alpha} attention) and ``bibert`` (BiBERT: sign activations, bool attention), and the other W1A1
combinations of their parts, and BinaryBERT's split model (two binary halves per layer) at 1-bit activations (the
recipe's ``--act-bits 1``); its 8- and 4-bit activations would need bit-serial products, which the engine has not.
"""
