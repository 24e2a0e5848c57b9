"""The embedded default world: a locally built tokenizer, a tiny model and its pre-training loop (pretrain.py; the
bootstrap stage that runs it is marco_train/stages/bootstrap.py) on the toy task's traces (tasks/traces.py)."""

RECORD_FILE = "record.json"  # a toy checkpoint's recorded figures (steps, seed, held-out accuracy)
