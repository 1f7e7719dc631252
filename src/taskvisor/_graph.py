"""Pictures of a task graph: :func:`graph` and :class:`TaskGraph` (Mermaid, DOT, SVG).

Runs in the caller's thread; pure computation (plus the ``dot`` binary of graphviz for
``to_svg()`` when it is installed). Nothing here needs a supervisor.

What is drawn. One node per task, labelled with its name, tier and ``runs_on``, with a
line for its locks (``claims`` exclusive, ``uses`` shared). An arrow runs from a provider
to each task that needs it: a ``requires`` item provided by another task of the batch, or
an ``output`` reference passed in the arguments. The edge is labelled with the items it
carries. An item no task of the batch provides is an *external input* (something
``sup.provide(...)`` or a task submitted elsewhere will provide), drawn as its own node,
not an error. In DOT and Mermaid each lock resource is a hexagon too, joined to its tasks
by dashed lines (bold for ``claims``), which do not constrain the layout.

The built-in SVG layout (used when graphviz is not installed) is the classic layered one,
kept deterministic — the same tasks in the same order give the same bytes:

1. layers by longest path from the sources (``graphlib.TopologicalSorter``), then every
   source (an external input, a task that needs nothing) moved down to just above its
   first consumer, so it does not drag a long edge across the picture;
2. an edge spanning several layers gets a narrow dummy node in each layer between, so
   long edges route around nodes instead of through them;
3. order within a layer by the barycentre heuristic, alternating downward and upward
   sweeps; ties keep submission order;
4. x positions pulled toward the mean of the neighbours, then packed left to right at
   the minimum spacing and shifted back so the layer stays centred on its wishes.

Locks are labels on the task in the built-in layout (a lock node would have no layer of
its own). Text width is estimated from a monospace font, so no font metrics are needed
and the SVG names only generic font families: it is self-contained.
"""

from __future__ import annotations

import graphlib
import hashlib
import itertools
import shutil
import subprocess
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape as _xml_escape

from ._errors import CycleError, DuplicateTaskError
from ._spec import OutputItem, Task, Tier, safe_repr

__all__ = ["TaskGraph", "graph"]

#: fill, border colour, border width per tier (the same in every format)
TIER_STYLE: dict[Tier, tuple[str, str, float]] = {
    Tier.LOW: ("#f1f3f5", "#868e96", 1.0),
    Tier.NORMAL: ("#e7f0fb", "#3b78c2", 1.5),
    Tier.HIGH: ("#fff1db", "#e07b00", 2.5),
    Tier.CRITICAL: ("#fde4e4", "#c62828", 3.5),
}
INPUT_STYLE = ("#ffffff", "#5f6b7a")
LOCK_STYLE = ("#f6f0ff", "#7048b6")

DOT_TIMEOUT = 60.0  # seconds for the dot binary: a hung graphviz never hangs the caller


@dataclass(frozen=True)
class GraphNode:
    """One node: a task, an external input, or (DOT and Mermaid only) a lock resource."""

    id: str  # "t0", "i0", "l0": safe in every format, whatever the name holds
    kind: Literal["task", "input", "lock"]
    name: str  # the task's name, or the item/resource as text
    tier: Tier | None = None
    runs_on: str | None = None
    claims: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()

    @property
    def lines(self) -> list[str]:
        """The label, line by line."""
        if self.kind == "task":
            assert self.tier is not None
            out = [self.name, f"{self.tier.name} · {self.runs_on}"]
            locks = [f"claims {c}" for c in self.claims] + [f"uses {u}" for u in self.uses]
            if locks:
                out.append("locks: " + ", ".join(locks))
            return out
        if self.kind == "input":
            return [self.name, "external input"]
        return [self.name, "lock"]


@dataclass(frozen=True)
class GraphEdge:
    """An arrow ``src`` → ``dst``; ``kind`` "dep" (items or output), "claims" or "uses"."""

    src: str
    dst: str
    kind: Literal["dep", "claims", "uses"]
    label: str


@dataclass
class TaskGraph:
    """The dependency graph of a batch of tasks, ready to draw: see :func:`graph`, which
    builds it (``nodes`` and ``edges`` are what the drawings are made from)."""

    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)

    # -- queries (for tests and tools) -------------------------------------------------

    def node(self, name: str, kind: str = "task") -> GraphNode:
        """The node of a task (or of an input/lock with ``kind``), by name."""
        for n in self.nodes:
            if n.name == name and n.kind == kind:
                return n
        raise KeyError(f"no {kind} node named {name!r}")

    def dependencies(self) -> set[tuple[str, str]]:
        """``{(from, to)}`` by node name for the dependency arrows (no lock lines)."""
        names = {n.id: n.name for n in self.nodes}
        return {(names[e.src], names[e.dst]) for e in self.edges if e.kind == "dep"}

    # -- Mermaid -----------------------------------------------------------------------

    def to_mermaid(self) -> str:
        """A Mermaid ``flowchart TD``, for a Markdown code block fenced as ``mermaid``."""
        out = ["flowchart TD"]
        for n in self.nodes:
            text = "<br>".join(_mermaid_text(line) for line in n.lines)
            if n.kind == "task":
                out.append(f'    {n.id}("{text}")')
            elif n.kind == "input":
                out.append(f'    {n.id}[/"{text}"/]')
            else:
                out.append(f'    {n.id}{{{{"{text}"}}}}')
        for e in self.edges:
            label = f'|"{_mermaid_text(e.label)}"|' if e.label else ""
            arrow = "-->" if e.kind == "dep" else "-.-"  # locks: dotted, no arrowhead
            out.append(f"    {e.src} {arrow}{label} {e.dst}")
        for tier, (fill, stroke, width) in TIER_STYLE.items():
            out.append(
                f"    classDef tier_{tier.name} fill:{fill},stroke:{stroke},"
                f"stroke-width:{width}px,color:#111"
            )
        out.append(
            f"    classDef input fill:{INPUT_STYLE[0]},stroke:{INPUT_STYLE[1]},"
            "stroke-dasharray:4 3,color:#111"
        )
        out.append(f"    classDef lock fill:{LOCK_STYLE[0]},stroke:{LOCK_STYLE[1]},color:#111")
        groups: dict[str, list[str]] = {}
        for n in self.nodes:
            cls = f"tier_{n.tier.name}" if n.tier is not None else n.kind
            groups.setdefault(cls, []).append(n.id)
        for cls, ids in groups.items():
            out.append(f"    class {','.join(ids)} {cls}")
        return "\n".join(out) + "\n"

    # -- DOT ---------------------------------------------------------------------------

    def to_dot(self) -> str:
        """A graphviz ``digraph`` (``dot -Tsvg graph.dot > graph.svg``)."""
        out = [
            "digraph taskvisor {",
            '  graph [rankdir=TB, nodesep=0.35, ranksep=0.55, fontname="Helvetica"];',
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
            '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
        ]
        for n in self.nodes:
            label = _dot_string("\n".join(n.lines))
            tooltip = _dot_string(n.name)
            common = f"label={label}, tooltip={tooltip}, class={_dot_string('tv-' + n.kind)}"
            if n.kind == "task":
                assert n.tier is not None
                fill, stroke, width = TIER_STYLE[n.tier]
                out.append(
                    f'  {n.id} [{common}, fillcolor="{fill}", color="{stroke}", penwidth={width}];'
                )
            elif n.kind == "input":
                fill, stroke = INPUT_STYLE
                out.append(
                    f'  {n.id} [{common}, shape=parallelogram, style="dashed,filled", '
                    f'fillcolor="{fill}", color="{stroke}"];'
                )
            else:
                fill, stroke = LOCK_STYLE
                out.append(
                    f'  {n.id} [{common}, shape=hexagon, style=filled, fillcolor="{fill}", '
                    f'color="{stroke}"];'
                )
        for e in self.edges:
            if e.kind == "dep":
                attrs = f"label={_dot_string(e.label)}" if e.label else ""
            else:
                bold = ", penwidth=2" if e.kind == "claims" else ""
                attrs = (
                    f'label="{e.kind}", style=dashed, dir=none, constraint=false, '
                    f'color="{LOCK_STYLE[1]}"{bold}'
                )
            out.append(f"  {e.src} -> {e.dst} [{attrs}];")
        out.append("}")
        return "\n".join(out) + "\n"

    # -- SVG ---------------------------------------------------------------------------

    def to_svg(self, engine: Literal["auto", "dot", "builtin"] = "auto") -> str:
        """An SVG picture: through graphviz's ``dot`` when it is installed (``"auto"``),
        else the built-in layered layout. ``engine`` forces one; ``"dot"`` without
        graphviz raises ``RuntimeError``."""
        if engine == "builtin" or (engine == "auto" and shutil.which("dot") is None):
            return self._builtin_svg()
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError("to_svg(engine='dot'): graphviz's dot is not installed")
        try:
            proc = subprocess.run(
                [dot, "-Tsvg"],
                input=self.to_dot().encode(),
                capture_output=True,
                timeout=DOT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"graphviz's dot did not finish in {DOT_TIMEOUT:g} s") from exc
        if proc.returncode != 0:
            raise RuntimeError(
                f"graphviz's dot failed (exit {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout.decode()

    def _repr_svg_(self) -> str:
        """Jupyter draws the graph inline."""
        return self.to_svg()

    def _builtin_svg(self) -> str:
        return _Layout(self).svg()


def graph(tasks: Iterable[Task[Any] | Callable[..., Any]]) -> TaskGraph:
    """The dependency graph of a batch, to draw: ``tv.graph(tasks).to_svg()``.

    ``tasks`` are :class:`Task` specs or plain callables (wrapped as ``submit`` would).
    Arrows run from providers to consumers (``requires``/``provides`` items and
    ``output`` references); items nobody in the batch provides are external inputs.
    Tiers are colours and border widths, locks and ``runs_on`` are in the labels, and
    DOT and Mermaid draw each lock resource as a node with dashed lines to its tasks.
    Raises :class:`CycleError` (naming the cycle) or :class:`DuplicateTaskError`, as
    submitting the batch would.
    """
    from ._supervisor import _as_task  # (the helper submit uses: same wrapping, same errors)

    specs = [_as_task(t, (), {}) for t in tasks]
    g = TaskGraph()
    ids: dict[str, str] = {}
    for i, spec in enumerate(specs):
        if spec.name in ids:
            raise DuplicateTaskError(spec.name)
        ids[spec.name] = f"t{i}"
        g.nodes.append(
            GraphNode(
                f"t{i}",
                "task",
                spec.name,
                spec.tier,
                spec.runs_on or ("aloop" if spec.is_coroutine else "thread"),
                tuple(sorted(map(_text, spec.claims))),
                tuple(sorted(map(_text, spec.uses))),
            )
        )
    providers: dict[Hashable, list[str]] = {}
    for spec in specs:
        for item in spec.provides:
            providers.setdefault(item, []).append(spec.name)
    inputs: dict[str, str] = {}  # item text -> node id
    deps: dict[str, set[str]] = {s.name: set() for s in specs}  # task -> its providers
    labels: dict[tuple[str, str], list[str]] = {}  # (src id, dst id) -> items carried

    def external(text: str) -> str:
        if text not in inputs:
            inputs[text] = f"i{len(inputs)}"
            g.nodes.append(GraphNode(inputs[text], "input", text))
        return inputs[text]

    for spec in specs:
        dst = ids[spec.name]
        wanted: list[tuple[str, list[str]]] = []  # (label, provider names)
        for item in sorted(spec.requires, key=_text):
            if isinstance(item, OutputItem):  # a requires= of someone's output item
                wanted.append(("output", [item.name] if item.name in ids else []))
                if item.name not in ids:
                    labels.setdefault((external(f"output of {item.name}"), dst), [])
                continue
            found = providers.get(item, [])
            if found:
                wanted.append((_text(item), found))
            else:
                labels.setdefault((external(_text(item)), dst), [])
        for ref in sorted(spec.refs):
            if ref in ids:
                wanted.append(("output", [ref]))
            else:
                labels.setdefault((external(f"output of {ref}"), dst), [])
        for label, names in wanted:
            for p in names:
                deps[spec.name].add(p)
                carried = labels.setdefault((ids[p], dst), [])
                if label not in carried:
                    carried.append(label)
    try:
        graphlib.TopologicalSorter(deps).prepare()
    except graphlib.CycleError as exc:
        raise CycleError(list(reversed(exc.args[1]))) from None
    for (src, dst), carried in labels.items():
        g.edges.append(GraphEdge(src, dst, "dep", ", ".join(carried)))
    locks: dict[str, str] = {}
    lock_kinds: tuple[tuple[Literal["claims", "uses"], str], ...]
    for n in list(g.nodes):
        lock_kinds = (*(("claims", c) for c in n.claims), *(("uses", u) for u in n.uses))
        for kind, r in lock_kinds:
            if r not in locks:
                locks[r] = f"l{len(locks)}"
                g.nodes.append(GraphNode(locks[r], "lock", r))
            g.edges.append(GraphEdge(locks[r], n.id, kind, kind))
    return g


def _text(item: Any) -> str:
    return str.__str__(item) if isinstance(item, str) else safe_repr(item)


# -- escaping ------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """A DOT quoted string showing ``text`` literally. Backslash and quote are escaped;
    ``&`` too, since graphviz reads HTML entities in labels (``&lt;`` would turn into
    ``<``); newlines become centred line breaks."""
    body = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("&", "&amp;")
        .replace("\r", "")
        .replace("\n", "\\n")
    )
    return f'"{body}"'


_MERMAID_ENTITIES = {
    "#": "#35;",
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "|": "#124;",
    "`": "#96;",
    "\n": " ",
    "\r": " ",
}


def _mermaid_text(text: str) -> str:
    """Text for inside a quoted Mermaid label: its entity codes (``#quot;``) for every
    character that would end the label or be read as markup."""
    return "".join(_MERMAID_ENTITIES.get(c, c) for c in text)


def _xml(text: str) -> str:
    return _xml_escape(text, {'"': "&quot;", "'": "&#39;"})


# -- the built-in layered layout -----------------------------------------------------------

CHAR_W = 7.2  # px per character: monospace at 12 px is 0.6 em
LINE_H = 15.0
PAD_X = 10.0
PAD_Y = 7.0
GAP_X = 24.0
GAP_Y = 58.0
DUMMY_W = 14.0
MARGIN = 20.0
MAX_CHARS = 36  # longer names are cut in the picture (the full name is in the tooltip)


@dataclass
class _Box:
    id: str
    node: GraphNode | None  # None: a dummy on a long edge
    layer: int = 0
    w: float = DUMMY_W
    h: float = 0.0
    x: float = 0.0  # centre
    y: float = 0.0  # top
    lines: list[str] = field(default_factory=list)


class _Layout:
    def __init__(self, g: TaskGraph) -> None:
        self.g = g
        self.boxes: dict[str, _Box] = {}
        for n in g.nodes:
            if n.kind == "lock":
                continue
            lines = [_cut(line) for line in n.lines]
            w = max(len(line) for line in lines) * CHAR_W + 2 * PAD_X
            h = len(lines) * LINE_H + 2 * PAD_Y
            self.boxes[n.id] = _Box(n.id, n, w=w, h=h, lines=lines)
        self.edges = [e for e in g.edges if e.kind == "dep"]
        self._layers()
        self._dummies()
        self._order()
        self._place()

    def _layers(self) -> None:
        preds: dict[str, list[str]] = {b: [] for b in self.boxes}
        succs: dict[str, list[str]] = {b: [] for b in self.boxes}
        for e in self.edges:
            preds[e.dst].append(e.src)
            succs[e.src].append(e.dst)
        order = list(graphlib.TopologicalSorter(preds).static_order())
        layer: dict[str, int] = {}
        for n in order:
            layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
        for n in reversed(order):  # sources sink to just above their first consumer
            if not preds[n] and succs[n]:
                layer[n] = min(layer[s] for s in succs[n]) - 1
        for n, b in self.boxes.items():
            b.layer = layer[n]

    def _dummies(self) -> None:
        """Split every edge spanning k > 1 layers into k segments through dummies."""
        self.paths: list[tuple[GraphEdge, list[str]]] = []
        self.segments: list[tuple[str, str]] = []
        for k, e in enumerate(self.edges):
            chain = [e.src]
            lo, hi = self.boxes[e.src].layer, self.boxes[e.dst].layer
            for layer in range(lo + 1, hi):
                d = f"d{k}_{layer}"
                self.boxes[d] = _Box(d, None, layer=layer, h=LINE_H)
                chain.append(d)
            chain.append(e.dst)
            self.paths.append((e, chain))
            self.segments.extend(itertools.pairwise(chain))

    def _order(self) -> None:
        n_layers = max((b.layer for b in self.boxes.values()), default=-1) + 1
        self.layers: list[list[str]] = [[] for _ in range(n_layers)]
        for b in self.boxes.values():  # (insertion order: tasks as given, then inputs)
            self.layers[b.layer].append(b.id)
        up: dict[str, list[str]] = {b: [] for b in self.boxes}
        down: dict[str, list[str]] = {b: [] for b in self.boxes}
        for s, d in self.segments:
            down[s].append(d)
            up[d].append(s)
        pos = {n: i for layer in self.layers for i, n in enumerate(layer)}

        def sweep(rng: Iterable[int], nbrs: dict[str, list[str]]) -> None:
            for li in rng:
                layer = self.layers[li]

                def key(n: str) -> tuple[float, int]:
                    ns = nbrs[n]
                    bary = sum(pos[m] for m in ns) / len(ns) if ns else float(pos[n])
                    return (bary, pos[n])  # ties: the current order

                layer.sort(key=key)
                for i, n in enumerate(layer):
                    pos[n] = i

        for _ in range(4):
            sweep(range(1, n_layers), up)
            sweep(range(n_layers - 2, -1, -1), down)
        self.up, self.down = up, down

    def _place(self) -> None:
        y = MARGIN
        for layer in self.layers:
            height = max(self.boxes[n].h for n in layer)
            for n in layer:
                b = self.boxes[n]
                b.y = y + (height - b.h) / 2
            y += height + GAP_Y
        self.height = y - GAP_Y + MARGIN
        for layer in self.layers:  # first: packed, centred on 0
            width = sum(self.boxes[n].w for n in layer) + GAP_X * (len(layer) - 1)
            x = -width / 2
            for n in layer:
                b = self.boxes[n]
                b.x = x + b.w / 2
                x += b.w + GAP_X
        for _ in range(6):
            for li in range(1, len(self.layers)):
                self._pull(self.layers[li], self.up)
            for li in range(len(self.layers) - 2, -1, -1):
                self._pull(self.layers[li], self.down)
        left = min((b.x - b.w / 2 for b in self.boxes.values()), default=0.0)
        right = max((b.x + b.w / 2 for b in self.boxes.values()), default=0.0)
        for b in self.boxes.values():
            b.x += MARGIN - left
        self.width = max(right - left + 2 * MARGIN, 680.0)  # (room for the legend)

    def _pull(self, layer: list[str], nbrs: dict[str, list[str]]) -> None:
        """Move each node toward the mean x of its neighbours, keep the order and the
        spacing (a forward packing pass), then shift the layer back by the mean error."""
        boxes = [self.boxes[n] for n in layer]
        wish = []
        for b in boxes:
            ns = nbrs[b.id]
            wish.append(sum(self.boxes[m].x for m in ns) / len(ns) if ns else b.x)
        xs: list[float] = []
        for i, b in enumerate(boxes):
            x = wish[i]
            if i:
                prev = boxes[i - 1]
                x = max(x, xs[-1] + prev.w / 2 + GAP_X + b.w / 2)
            xs.append(x)
        shift = sum(w - x for w, x in zip(wish, xs, strict=True)) / len(xs)
        for b, x in zip(boxes, xs, strict=True):
            b.x = x + shift

    def svg(self) -> str:
        digest = hashlib.sha1(self.g.to_dot().encode()).hexdigest()[:8]
        arrow = f"tvarrow-{digest}"  # ids unique per graph: several SVGs in one page
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" '
            f'height="{self.height + 70:.0f}" viewBox="0 0 {self.width:.0f} '
            f'{self.height + 70:.0f}" class="tv-graph" '
            'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="12">',
            "<defs>",
            f'<marker id="{arrow}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
            'markerHeight="8" orient="auto-start-reverse">'
            '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>',
            "</defs>",
            '<rect width="100%" height="100%" fill="#ffffff"/>',
        ]
        names = {n.id: n.name for n in self.g.nodes}
        for e, chain in self.paths:
            pts = [self._anchor(chain[0], bottom=True)]
            for d in chain[1:-1]:
                b = self.boxes[d]
                pts.append((b.x, b.y + b.h / 2))
            pts.append(self._anchor(chain[-1], bottom=False))
            d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
            for (x0, y0), (x1, y1) in itertools.pairwise(pts):
                my = (y0 + y1) / 2
                d += f" C{x0:.1f},{my:.1f} {x1:.1f},{my:.1f} {x1:.1f},{y1:.1f}"
            dashed = ' stroke-dasharray="5 3"' if e.src.startswith("i") else ""
            title = f"{names[e.src]} → {names[e.dst]}" + (f" ({e.label})" if e.label else "")
            out.append(
                f'<g class="tv-edge" data-from="{_xml(names[e.src])}" '
                f'data-to="{_xml(names[e.dst])}"><title>{_xml(title)}</title>'
                f'<path d="{d}" fill="none" stroke="#555" stroke-width="1.3"{dashed} '
                f'marker-end="url(#{arrow})"/>'
            )
            if e.label and len(self.paths) <= 80:
                (x0, y0), (x1, y1) = pts[-2], pts[-1]
                out.append(
                    f'<text x="{(x0 + x1) / 2 + 4:.1f}" y="{(y0 + y1) / 2:.1f}" '
                    f'font-size="10" fill="#666">{_xml(_cut(e.label))}</text>'
                )
            out.append("</g>")
        for b in self.boxes.values():
            n = b.node
            if n is None:
                continue
            left, top = b.x - b.w / 2, b.y
            if n.kind == "task":
                assert n.tier is not None
                fill, stroke, width = TIER_STYLE[n.tier]
                extra = f' stroke-width="{width}"'
                cls = f"tv-node tv-task tv-tier-{n.tier.name}"
            else:
                fill, stroke = INPUT_STYLE
                extra = ' stroke-width="1.2" stroke-dasharray="4 3"'
                cls = "tv-node tv-input"
            tip = "\n".join(n.lines if n.kind != "task" else [n.name, *n.lines[1:]])
            out.append(
                f'<g class="{cls}" data-name="{_xml(n.name)}"><title>{_xml(tip)}</title>'
                f'<rect x="{left:.1f}" y="{top:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" '
                f'rx="8" ry="8" fill="{fill}" stroke="{stroke}"{extra}/>'
            )
            for i, line in enumerate(b.lines):
                weight = ' font-weight="bold"' if i == 0 else ' fill="#444" font-size="11"'
                out.append(
                    f'<text x="{b.x:.1f}" y="{top + PAD_Y + (i + 0.78) * LINE_H:.1f}" '
                    f'text-anchor="middle"{weight}>{_xml(line)}</text>'
                )
            out.append("</g>")
        out.append(self._legend(self.height))
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def _anchor(self, node: str, *, bottom: bool) -> tuple[float, float]:
        b = self.boxes[node]
        return (b.x, b.y + b.h if bottom else b.y)

    def _legend(self, y: float) -> str:
        parts = [f'<g class="tv-legend" transform="translate({MARGIN:.0f},{y + 10:.0f})">']
        x = 0.0
        for tier, (fill, stroke, width) in TIER_STYLE.items():
            parts.append(
                f'<rect x="{x:.0f}" y="0" width="18" height="14" rx="3" fill="{fill}" '
                f'stroke="{stroke}" stroke-width="{width}"/>'
                f'<text x="{x + 24:.0f}" y="11" font-size="11">{tier.name}</text>'
            )
            x += 34 + len(tier.name) * CHAR_W
        fill, stroke = INPUT_STYLE
        parts.append(
            f'<rect x="{x:.0f}" y="0" width="18" height="14" rx="3" fill="{fill}" '
            f'stroke="{stroke}" stroke-dasharray="4 3"/>'
            f'<text x="{x + 24:.0f}" y="11" font-size="11">external input</text>'
            '<text x="0" y="34" font-size="11" fill="#444">arrow: provider → consumer '
            "(labelled with the items) · claims = exclusive lock, uses = shared</text>"
        )
        parts.append("</g>")
        return "".join(parts)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"
