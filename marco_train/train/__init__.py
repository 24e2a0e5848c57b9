"""Training pieces for the sft and dpo stages (marco_train/stages/): losses, log-prob layouts incl. prefix sharing,
pair handling, and the shared HF Trainer glue in `common`."""
