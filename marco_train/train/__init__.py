"""Training pieces for the sft and dpo stages (marco_train/stages/): losses (keys in loss_config), log-prob layouts
incl. prefix sharing, pair handling, the DPO trainer and its reference cache, the SFT trainer, and the shared HF
Trainer glue in `common` (arguments, checkpoints, tracker callback, LoRA setup, the final save)."""
