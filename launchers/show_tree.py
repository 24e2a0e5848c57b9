"""Print one MCTS tree indented: `python launchers/show_tree.py runs/demo/mcts-<fp> [--id PROBLEM_ID] [--width 80]`."""

from marco_train.data.show_tree import main

if __name__ == "__main__":
    main()
