"""Training stages (teacher, search, finetune) on one shared loop (:mod:`compress.train.loop`)."""
