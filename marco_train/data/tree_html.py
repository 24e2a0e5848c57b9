"""One self-contained HTML page of search trees (`marco-train show-tree ... --html out.html`; a few of them go to
W&B from the mcts stage): inline CSS and a few lines of inline JavaScript, no external URL, so the page opens
offline and as a W&B HTML panel.

Each tree is a `<section class="tree" data-problem=... data-solved=... data-reflection=...>` holding nested
lists of nodes; each node an `<li class="node" data-id data-type data-verdict data-marks>` with its type, visits N,
mean value Q/N, confidence, verdict and the text it generated (collapsible). Nodes on a path the split picked carry
their marks (`sft`, `chosen`, `rejected`: data/tree_view.py). Buttons at the top show all trees, the solved ones,
the failed ones, or those with a reflection node.
"""

from __future__ import annotations

from html import escape
from typing import Iterable, Optional

from .tree_view import PathMarks, children_of, summarize_tree
from .trees import Tree

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:0 0 .3em 0}
.tree{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.meta,.legend{color:#555;font-size:.9em}
ul.nodes,ul.nodes ul{list-style:none;padding-left:1.3em;margin:0;border-left:1px dotted #bbb}
li.node{margin:.15em 0}
summary{cursor:pointer;font-family:ui-monospace,monospace;font-size:.85em}
pre{white-space:pre-wrap;margin:.2em 0 .4em 1.2em;font-size:.85em;background:#f7f7f7;padding:.3em}
.type{font-weight:bold} .right{color:#08660f;font-weight:bold} .wrong{color:#a00;font-weight:bold}
.mark{font-size:.75em;padding:0 .35em;border-radius:3px;margin-left:.3em;color:#fff}
.mark-sft{background:#2e7d32} .mark-chosen{background:#1565c0} .mark-rejected{background:#c62828}
li.sft>details>summary{outline:2px solid #2e7d32}
li.chosen>details>summary{background:#e3f0fd} li.rejected>details>summary{background:#fdeaea}
button{margin-right:.4em}
"""

SCRIPT = """
function show(which){
  var n=0;
  document.querySelectorAll('section.tree').forEach(function(s){
    var on = which==='all' || (which==='solved' && s.dataset.solved==='true') ||
      (which==='failed' && s.dataset.solved==='false') || (which==='reflection' && s.dataset.reflection==='true');
    s.style.display = on ? '' : 'none'; if(on){n++;}
  });
  document.getElementById('shown').textContent = n;
}
"""


def _node_html(tree: Tree, node, children, marks, width: int) -> str:
    mean = node.value / node.visits if node.visits else 0.0
    conf = "-" if node.confidence is None else f"{node.confidence:.3f}"
    verdict = ("right" if node.correct else "wrong") if node.is_terminal else ""
    own = marks.get(node.id, [])
    badges = "".join(f'<span class="mark mark-{m}">{m.upper() if m == "sft" else m}</span>' for m in own)
    samples = f" x{node.samples}" if node.samples > 1 else ""
    head = (f'<span class="id">[{node.id}]{samples}</span> <span class="type">{escape(node.type or "-")}</span> '
            f'N={node.visits} Q/N={mean:.2f} c={conf}'
            + (f' <span class="{verdict}">{verdict.upper()}</span>' if verdict else "")
            + (f" answer {escape(str(node.answer))}" if node.is_terminal and node.answer is not None else "")
            + badges)
    text = node.text if len(node.text) <= width else node.text[:width] + " ..."
    kids = children.get(node.id, [])
    inner = "".join(_node_html(tree, c, children, marks, width) for c in kids)
    classes = " ".join(["node"] + own)
    return (f'<li class="{classes}" data-id="{node.id}" data-type="{escape(node.type or "", quote=True)}" '
            f'data-verdict="{verdict}" data-marks="{" ".join(own)}"><details open><summary>{head}</summary>'
            f'<pre>{escape(text)}</pre></details>' + (f"<ul>{inner}</ul>" if inner else "") + "</li>")


def tree_section(tree: Tree, marks: Optional[PathMarks] = None, width: int = 2000) -> str:
    marks = marks or PathMarks()
    summary = summarize_tree(tree, marks)
    node_marks = marks.node_marks(tree)
    children = children_of(tree)
    meta = tree.meta
    picked = "; ".join(f"{m}: {n} path{'s' if n != 1 else ''}" for m, n in summary.marks.items())
    nodes = "".join(_node_html(tree, root, children, node_marks, width) for root in children.get(None, []))
    return (f'<section class="tree" id="tree-{escape(tree.problem_id, quote=True)}" '
            f'data-problem="{escape(tree.problem_id, quote=True)}" data-solved="{str(summary.solved).lower()}" '
            f'data-reflection="{str(summary.reflections > 0).lower()}" data-nodes="{summary.nodes}">'
            f"<h2>{escape(tree.problem_id)}: {escape(tree.question)}</h2>"
            f'<p class="meta">ground truth {escape(tree.answer)}; {summary.nodes} nodes, depth {summary.depth}, '
            f"{summary.answers} answers ({summary.correct} right), {summary.reflections} reflections; "
            f"{meta.get('iterations', '?')} iterations, stopped: {escape(str(meta.get('stop_reason', '?')))}"
            + (f"; split picked {escape(picked)}" if picked else "") + "</p>"
            f'<ul class="nodes">{nodes}</ul></section>')


def page(trees: Iterable[Tree], title: str = "marco-train trees", marks: Optional[PathMarks] = None,
         width: int = 2000) -> str:
    """The whole page for `trees` (node text cut at `width` characters)."""
    trees = list(trees)
    sections = "\n".join(tree_section(t, marks, width) for t in trees)
    legend = ('Marks: <span class="mark mark-sft">SFT</span> a path the split kept as an SFT row, '
              '<span class="mark mark-chosen">chosen</span> and <span class="mark mark-rejected">rejected</span> '
              "the two sides of a DPO pair. N visits, Q/N mean value, c confidence.")
    buttons = "".join(f"<button onclick=\"show('{w}')\">{label}</button>" for w, label in
                      (("all", "all"), ("solved", "solved"), ("failed", "failed"),
                       ("reflection", "with reflection")))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body><h1>{escape(title)}</h1>"
            f'<p class="legend">{legend}</p><p>{buttons} <span id="shown">{len(trees)}</span> of {len(trees)} '
            f"trees shown</p>\n{sections}\n</body></html>\n")
