"""One module per stage kind (bootstrap, mcts, split, sft, dpo, eval); see docs/architecture.md."""
