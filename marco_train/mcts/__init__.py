"""The search alone: tree (nodes, UCT, backpropagation, stop rules), policy (node types, prefills), search (the
batched MCTS loop). Generation is in marco_train/engines; the mcts stage is marco_train/stages/mcts.py."""
