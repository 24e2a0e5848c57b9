"""Data between the search and the trainers: the tree-record format (trees, authors_format), trees -> paths
(paths), the length-balanced SFT set and DPO pairs (split: pure functions), their on-disk schema (schema), and
the text viewer (show_tree). The split stage itself is marco_train/stages/split.py."""
