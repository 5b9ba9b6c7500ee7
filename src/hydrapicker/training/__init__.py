"""Training: every config (:mod:`.config`), the epoch loop (:mod:`.loop`), the stages (:mod:`.stages`), few-shot fine-tuning (:mod:`.finetune`) and label-free adaptation (:mod:`.adapt`)."""
