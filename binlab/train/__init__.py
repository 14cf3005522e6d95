"""binlab.train: one training loop for every chapter.

    binlab.train.trainer      TrainConfig and Trainer: checkpoints that survive interruption, exact resume,
                              best and final dev numbers
    binlab.train.optim        AdamW or the papers' BertAdam, the warm-up schedule, per-tensor gradient clipping
    binlab.train.evaluation   the model's logits over a split and its dev score
    binlab.train.distributed  several processes or machines under torchrun: shards, DDP, rank 0 writes
"""
