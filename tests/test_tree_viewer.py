"""The tree viewer (launchers/show_tree.py: data/show_tree.py, tree_view.py, tree_html.py) on three hand-made trees
and a hand-made split: the list, the filters (hand-counted), the marks of the SFT / chosen / rejected paths, and
the HTML page parsed back (no external URL, every node with its type, the marks)."""

import json
from html.parser import HTMLParser

import pytest

from conftest import PYTHON, run
from marco_train.data.schema import PAIR_COLUMNS, SFT_COLUMNS, save_rows
from marco_train.data.show_tree import main
from marco_train.data.trees import node_record, tree_record


def node(id, parent, type, text="", terminal=False, correct=None):
    return node_record(id=id, parent=parent, type=type, text=text, visits=2, value=1.0, confidence=0.9,
                       is_terminal=terminal, answer=("7" if correct else "5") if terminal else None,
                       correct=correct if terminal else None, generated_tokens=3)


# p1 solved, with a reflection; p2 failed, none; p3 failed, with a reflection.
TREES = [
    tree_record(problem_id="p1", question="Compute 3 + 4.", answer="7", iterations=4, stop_reason="enough",
                correct_terminals=2, nodes=[
                    node(0, None, "root"), node(1, 0, "thinking", "<thinking>3 + 4 = 7</thinking>"),
                    node(2, 1, "answer", "<answer>The answer is: 5</answer>", True, False),
                    node(3, 1, "reflection", "<reflection>Wait!</reflection>"),
                    node(4, 3, "answer", "<answer>The answer is: 7</answer>", True, True),
                    node(5, 1, "answer", "<answer>The answer is: 7</answer>", True, True)]),
    tree_record(problem_id="p2", question="Compute 1 + 1.", answer="2", iterations=2, stop_reason="gave_up",
                correct_terminals=0, nodes=[
                    node(0, None, "root"), node(1, 0, "thinking", "<thinking>1 + 1 = 3</thinking>"),
                    node(2, 1, "answer", "<answer>The answer is: 3</answer>", True, False)]),
    tree_record(problem_id="p3", question="Compute 2 + 2.", answer="4", iterations=2, stop_reason="gave_up",
                correct_terminals=0, nodes=[
                    node(0, None, "root"), node(1, 0, "thinking", "<thinking>2 + 2 = 5 & <b>x</b></thinking>"),
                    node(2, 1, "reflection", "<reflection>Wait!</reflection>"),
                    node(3, 2, "answer", "<answer>The answer is: 5</answer>", True, False)]),
]


@pytest.fixture
def trees_and_split(tmp_path):
    trees = tmp_path / "trees.jsonl"
    trees.write_text("".join(json.dumps(t) + "\n" for t in TREES))
    split = tmp_path / "split"
    sft = [{"id": "p1/4", "problem_id": "p1", "question": "Compute 3 + 4.", "response": "r", "tokens": 9,
            "tercile": "longest", "confidence": 0.9}]
    pairs = [{"id": "p1/5-2", "problem_id": "p1", "question": "Compute 3 + 4.", "chosen": "c", "rejected": "r",
              "shared_prefix_len": 4, "chosen_tokens": 6, "rejected_tokens": 6}]
    save_rows(sft, SFT_COLUMNS, split / "sft")
    save_rows(pairs, PAIR_COLUMNS, split / "pairs")
    (split / "summary.json").write_text(json.dumps({"source": str(trees), "format": "ours"}))
    return trees, split


def shown(capsys, *args):
    main([str(a) for a in args])
    return capsys.readouterr().out.splitlines()


def test_list_and_the_filters_give_the_hand_counted_trees(trees_and_split, capsys):
    trees, split = trees_and_split

    def ids(*flags):
        lines = shown(capsys, trees, "--list", *flags)
        assert lines[-1] == f"{len(lines) - 1} trees"
        return [x.split()[0] for x in lines[:-1]]

    assert ids() == ["p1", "p2", "p3"]
    assert ids("--solved") == ["p1"]
    assert ids("--failed") == ["p2", "p3"]
    assert ids("--with-reflection") == ["p1", "p3"]
    assert ids("--failed", "--with-reflection") == ["p3"]
    (p1, p2, _, _) = shown(capsys, split, "--list")  # a split directory: its trees, its marks
    assert p1.split() == ["p1", "solved", "nodes", "6", "depth", "3", "answers", "3", "right", "2", "reflections",
                          "1", "enough", "sft", "1,", "chosen", "1,", "rejected", "1"]
    assert p2.split()[:2] == ["p2", "failed"] and "sft" not in p2


def test_text_view_marks_the_paths_the_split_picked(trees_and_split, capsys):
    trees, split = trees_and_split
    lines = shown(capsys, trees, "--id", "p1", "--split", split)
    marks = {int(x.strip().split("]")[0][1:]): x.count("<SFT>") * ["sft"] + x.count("<CHOSEN>") * ["chosen"] +
             x.count("<REJECTED>") * ["rejected"] for x in lines[1:]}
    # SFT: 0-1-3-4; chosen: 0-1-5; rejected: 0-1-2
    assert marks == {0: ["sft", "chosen", "rejected"], 1: ["sft", "chosen", "rejected"], 2: ["rejected"],
                     3: ["sft"], 4: ["sft"], 5: ["chosen"]}
    assert "<SFT>" not in "\n".join(shown(capsys, trees, "--id", "p1"))  # no split: no marks


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.nodes, self.urls, self.tags = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action", "data", "poster")]
        if tag == "section":
            self.sections.append(attrs)
        elif tag == "li" and "node" in attrs.get("class", "").split():
            self.nodes.append((self.sections[-1]["data-problem"], attrs))


def test_the_html_page_is_self_contained_with_every_node_its_type_and_the_marks(trees_and_split, capsys):
    trees, split = trees_and_split
    out = split.parent / "trees.html"
    assert shown(capsys, split, "--html", out) == [f"wrote {out} (3 trees)"]
    text = out.read_text()
    page = Page()
    page.feed(text)
    assert page.urls == [] and "http" not in text and not {"link", "img", "iframe"} & page.tags
    assert [s["data-problem"] for s in page.sections] == ["p1", "p2", "p3"]
    assert [(s["data-solved"], s["data-reflection"]) for s in page.sections] == \
        [("true", "true"), ("false", "false"), ("false", "true")]
    want = {(t["problem_id"], n["id"], n["type"]) for t in TREES for n in t["nodes"]}
    assert {(p, int(a["data-id"]), a["data-type"]) for p, a in page.nodes} == want and len(page.nodes) == len(want)
    marks = {(p, int(a["data-id"])): a["data-marks"].split() for p, a in page.nodes if a["data-marks"]}
    assert marks == {("p1", 0): ["sft", "chosen", "rejected"], ("p1", 1): ["sft", "chosen", "rejected"],
                     ("p1", 2): ["rejected"], ("p1", 3): ["sft"], ("p1", 4): ["sft"], ("p1", 5): ["chosen"]}
    verdicts = {(p, int(a["data-id"])): a["data-verdict"] for p, a in page.nodes if a["data-verdict"]}
    assert verdicts == {("p1", 2): "wrong", ("p1", 4): "right", ("p1", 5): "right", ("p2", 2): "wrong",
                        ("p3", 3): "wrong"}
    assert "2 + 2 = 5 &amp; &lt;b&gt;x&lt;/b&gt;" in text  # node text is escaped, not markup

    filtered = split.parent / "failed.html"
    shown(capsys, trees, "--html", filtered, "--failed", "--with-reflection")
    only = Page()
    only.feed(filtered.read_text())
    assert [s["data-problem"] for s in only.sections] == ["p3"] and len(only.nodes) == 4


def test_errors_are_one_line(trees_and_split, tmp_path):
    trees, _ = trees_and_split
    proc = run([PYTHON, "launchers/show_tree.py", str(trees), "--solved", "--id", "p2"], check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {trees}: no tree with problem id 'p2' passing --solved\n"
    proc = run([PYTHON, "launchers/show_tree.py", str(tmp_path / "nowhere")], check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {tmp_path / 'nowhere'}: no such file")
