"""binlab.methods: the papers' recipes, each one module, and what they share.

    binlab.methods.pipeline      what every multi-stage recipe shares: RecipeConfig (a TrainConfig inside), the
                                 run folder, the teacher stage, one Trainer stage, the summary
    binlab.methods.splitting     ternary weight splitting, chapter 4's formulas (BinaryBERT)
    binlab.methods.split_model   the split model: two binary halves per layer, built from a ternary model
    binlab.methods.width         DynaBERT-style width pruning (BinaryBERT's half-width start)
    binlab.methods.distill       the distillation losses of BinaryBERT, BiBERT and BiT
    binlab.methods.binarybert    BinaryBERT: teacher -> ternary -> split -> binary
    binlab.methods.bit           BiT: teacher -> W1A2 -> W1A1, elastic activations, one joint KD stage per hop
    binlab.methods.bibert        BiBERT: teacher -> W1A1 with Bi-Attention, direction-matching distillation
    binlab.methods.finetune      plain fine-tuning, the ``binlab train`` command line and the RECIPES table
"""
