"""What the compiler made of a kernel, read from its PTX: no GPU, no knowledge of its source.

:func:`metrics` reads one kernel's PTX: global and shared loads and stores by
width and vector lanes, ``bar.sync`` and ``shfl.sync``, the loops, and the
instructions per element of the hot loops. :func:`table` renders kernels x
dtypes with ptxas's registers and spills. Definitions, checkable by hand:

- An *instruction* is a statement ending in ``;`` that is not a directive:
  labels, braces, ``.reg``/``.loc`` lines and comments do not count.
- A *loop* runs from a label to the last backward branch to it (``bra``,
  ``bra.uni`` or ``@%p bra`` to a label defined earlier); loops nest by
  containment. A *tree loop* halves a counter (``shr X, Y, 1`` and a ``setp``
  of ``X`` with 0) in its own body: it runs log2(threads) = ``L`` trips.
- The *array* of an access is the kernel parameter (``cvta.to.global``) or
  shared symbol its address is computed from. An access moves bytes / w
  elements: w is the width of a float type (``.f32``: 4) and, for raw bits
  (``.u16``, ``.v4.b32``), the storage dtype's, as NVVM moves float16 as bits.
- The *row region* is the outermost loop holding a barrier (or shuffle) and
  a global access, the grid-stride loop over rows; else the whole kernel
  (one row per thread group, as in a warp-per-row kernel).
- A *streaming region* is a loop (or the kernel) that is no tree loop,
  holds no streaming loop and accesses memory in its own body: a strided
  pass over the row, or a fully unrolled register cache. One trip moves E
  elements: of the global accesses (shared if none) on its longest path,
  the count per array and direction that most arrays share, leaving out
  arrays moved at most twice (mean, rstd, a segment's partial statistics)
  unless all are, the smaller on a tie (a
  scalar shift load beside the row's loads counts one more).
- *Instructions per element* is the costliest path through the row region,
  branches taken forward only, on which a streaming region weighs its
  longest path / E and nothing else weighs: passes add up, versions of a
  pass (a loop unswitched on ``has_weight``) are alternatives. Reductions
  count only inside a streaming region (an unrolled warp kernel). A loop
  touching the arrays of the streaming loop before it, with no barrier or
  shuffle between, is its remainder (or scalar tail): the one with the
  larger E counts. Global loads per element add ``ld.global`` / E likewise.
- *Barriers per row* are the static barriers in the row region, shown as
  ``a + b·L + c·n``: ``b`` in tree loops (L = 5 for a warp, 8 for 256
  threads), ``c`` in other loops of n trips, ``a`` run once: ``4 + 2·L`` is
  14 barriers a row for a warp, 20 for a 256-thread block.

``python tests/ptx_metrics.py --arch sm_90`` prints the table for today's
kernels; ``--ptx-dir DIR`` reads the files ``python -m numba_ln.ptx --arch
sm_90 --out DIR`` wrote instead, at this commit or an older one.
"""

import argparse
import bisect
import collections
import functools
import importlib.util
import pathlib
import re
import subprocess
import tempfile

_LABEL = re.compile(r"^([$\w.]+):(?!:)")
_USAGE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_FLOAT_ELEMENT = {"f16": 2, "bf16": 2, "f16x2": 2, "bf16x2": 2, "f32": 4, "f64": 8}
_BARRIERS = ("bar.sync", "barrier.sync", "bar.red", "barrier.red")
_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "bfloat16": 2}
_SPACES = ("global", "shared", "local", "const")

Access = collections.namedtuple("Access", "index op bytes lanes type array")

#: The docstrings' example: a loop moving 16-byte vectors, then a barrier.
LOOP = ("$L:\n ld.global.v4.f32 {%f1, %f2, %f3, %f4}, [%rd1];\n add.s64 %rd1, %rd1, 16;\n"
        " @%p1 bra $L;\n bar.sync 0;")


def _parse(code):
    """The instructions as (guard, opcode, operands), and label -> index of the next one."""
    found, labels, pending = [], {}, ""
    for line in code.splitlines():
        line = line.split("//")[0].strip()
        if pending:  # a statement over several lines (a call's arguments)
            line, pending = pending + " " + line, ""
        elif not line or line[0] in "{}().":  # braces, parameter lists, directives
            continue
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(found)
            line = line[label.end():].strip()
        if not line.endswith(";"):
            pending = line
            continue
        guard, text = line[:-1].split(None, 1) if line[0] == "@" else ("", line[:-1])
        opcode, _, rest = text.strip().partition(" ")
        found.append((guard, opcode, [op.strip() for op in rest.split(",")] if rest else []))
    return found, labels


def _arrays(ins):
    """Register -> the arrays (``param_N``, shared symbols) its value is computed from."""
    params, flows, roots = {}, [], collections.defaultdict(set)
    for _, opcode, ops in ins:
        if not ops or not ops[0].startswith("%") or opcode.startswith(("st.", "bra", "setp")):
            continue
        if opcode.startswith("ld.param"):
            params[ops[0]] = re.sub(r".*_(param_\d+)\]$", r"\1", ops[1])
        elif opcode.startswith("cvta.to.global"):
            roots[ops[0]].add(params.get(ops[1], ops[0]))
        elif opcode.startswith("mov") and re.match(r"[A-Za-z_$]", ops[1]):
            roots[ops[0]].add(ops[1])  # a shared array's symbol
        elif not opcode.startswith("ld."):  # a loaded value is data, not an address
            flows.append((ops[0], re.findall(r"%\w+", " ".join(ops[1:]))))
    changed = True
    while changed:  # to a fixed point: a loop-carried register is defined after its use
        changed = False
        for dst, srcs in flows:
            new = set().union(*(roots.get(s, ()) for s in srcs)) - roots[dst]
            roots[dst] |= new
            changed = changed or bool(new)
    return roots


def _accesses(ins):
    """The loads and stores other than of parameters, as :class:`Access`."""
    roots, found = _arrays(ins), []
    for index, (_, opcode, ops) in enumerate(ins):
        quals = opcode.split(".")
        if quals[0] not in ("ld", "st") or "param" in quals:
            continue
        spaces = [q.split("::")[0] for q in quals if q.split("::")[0] in _SPACES]  # shared::cta
        lanes = next((int(q[1:]) for q in quals if re.fullmatch(r"v\d+", q)), 1)
        width = int(re.search(r"\d+", quals[-1]).group()) // 8 * (1 + quals[-1].endswith("x2"))
        base = re.search(r"\[([$%\w.]+)", " ".join(ops)).group(1)
        array = frozenset(roots.get(base) or [base if base[0] != "%" else "?"])
        op = ".".join([quals[0]] + (spaces or ["generic"]) + ["nc"] * ("nc" in quals))
        found.append(Access(index, op, width * lanes, lanes, quals[-1], array))
    return found


def _loops(ins, labels):
    """(start, end, label) of each loop, outer before inner."""
    ends = {op[0]: i for i, (_, opcode, op) in enumerate(ins)
            if opcode.split(".")[0] == "bra" and labels.get(op[0], i + 1) <= i}
    return sorted(((labels[name], end, name) for name, end in ends.items()),
                  key=lambda loop: (loop[0], -loop[1]))


def _successors(ins, labels, index):
    """Where control may go after instruction ``index``."""
    guard, opcode, ops = ins[index]
    if opcode.split(".")[0] == "bra":
        return ([labels[ops[0]]] if ops[0] in labels else []) + [index + 1] * bool(guard)
    return [] if opcode in ("ret", "exit") and not guard else [index + 1]


def _is_tree(body):
    """True when a loop's own instructions halve a counter and test it against 0."""
    halved = {ops[0] for _, opcode, ops in body if opcode.startswith("shr") and ops[-1] == "1"}
    return any(opcode.startswith("setp") and ops[1] in halved and ops[2] == "0"
               for _, opcode, ops in body)


def _syncs(ins, kinds=_BARRIERS + ("shfl.sync",)):
    return sum(opcode.startswith(kinds) for _, opcode, _ in ins)


def _elements(path, itemsize):
    """E of the accesses on a path: per array and direction, the count most share
    (arrays moved at most twice a trip left out unless all are)."""
    moved = collections.Counter()
    for a in [a for a in path if ".global" in a.op] or path:
        moved[a.op[:2], a.array] += a.bytes / _FLOAT_ELEMENT.get(a.type, itemsize)
    counts = [c for c in moved.values() if c > 2] or list(moved.values())
    return max(counts, key=lambda c: (counts.count(c), -c)) if counts else 0


def _one_pass_each(hot, ins):
    """(cost, hot) once a loop and its remainder loop (or scalar tail) count as one pass."""
    kept = []
    for h in hot:
        if kept and h["arrays"] == kept[-1]["arrays"] and not _syncs(
                ins[kept[-1]["span"][1]:h["span"][0]]):
            kept[-1] = max(kept[-1], h, key=lambda k: k["elements"])
        else:
            kept.append(h)
    return sum(h["per_element"] for h in kept), kept


def metrics(code, itemsize):
    """Everything this module measures, for one kernel's PTX (see the module's definitions).

    Parameters
    ----------
    code : str
        The PTX of one kernel, device helpers inlined.
    itemsize : int
        Bytes per element of the storage dtype (2 for float16).

    Returns
    -------
    dict
        ``instructions``; ``memory``: accesses per (op, bytes, lanes), op as
        ``ld.global.nc``; ``bar_sync``, ``shfl_sync``: static counts;
        ``loops``: label, size, tree, streaming; ``row``: the row region's
        label, its barriers ``once``, ``per_level`` (tree loops), ``in_loops``
        (other loops), its ``shfl``; ``hot``: the streaming regions on the
        costliest path (label, instructions on its path, elements E,
        per_element, loads, load_bytes, span, arrays); ``per_element``,
        ``loads_per_element``,
        ``load_bytes``; ``vector_stores``: any ``st.global.v*``.

    Examples
    --------
    A loop of 3 instructions moving 4 floats a trip, a barrier after it:

    >>> m = metrics(LOOP, 4)
    >>> m["per_element"], m["loads_per_element"], m["load_bytes"], m["memory"]
    (0.75, 0.25, [16], {('ld.global', 16, 4): 1})
    >>> m["loops"], m["row"]
    ([{'label': '$L', 'size': 3, 'tree': False, 'streaming': True}], \
{'label': 'entry', 'once': 1, 'per_level': 0, 'in_loops': 0, 'shfl': 0})
    """
    ins, labels = _parse(code)
    memory = _accesses(ins)
    regions = [(0, len(ins) - 1, "entry")] + _loops(ins, labels)  # outer before inner

    def inside(r, o):
        return r != o and o[0] <= r[0] and r[1] <= o[1]
    parent = {r: [o for o in regions[:regions.index(r)] if inside(r, o)][-1] for r in regions[1:]}
    kids = {r: [k for k in regions[1:] if parent[k] == r] for r in regions}
    where = [regions[0]] * len(ins)  # the innermost region of each instruction
    for r in regions[1:]:
        where[r[0]:r[1] + 1] = [r] * (r[1] - r[0] + 1)
    tree = {r: r != regions[0] and _is_tree([t for t, w in zip(ins, where) if w == r])
            for r in regions}
    own = collections.defaultdict(list)  # region -> the accesses in its own body
    for a in memory:
        own[where[a.index]].append(a)
    streaming, below = {}, {}
    for r in reversed(regions):  # inner loops first
        below[r] = any(streaming[k] or below[k] for k in kids[r])
        streaming[r] = not (tree[r] or below[r]) and bool(own[r])
    # Basic blocks start at labels and after branches: loops start and end on their edges.
    leaders = sorted({0} | set(labels.values())
                     | {i + 1 for i, t in enumerate(ins) if t[1].split(".")[0] == "bra"})

    def node_of(i, region):
        """The block of ``i`` (its first index) in ``region``'s own body, or the child loop."""
        r = where[i]
        while r != region and parent[r] != region:
            r = parent[r]
        return r if r != region else leaders[bisect.bisect_right(leaders, i) - 1]

    @functools.cache
    def longest(region):
        """(cost, hot) of the costliest forward path through ``region``: blocks and child loops
        in layout order (a topological one, back edges dropped), each weighed as control
        enters it, the best cost carried along each forward edge."""
        best = {node_of(region[0], region): (0.0, [], [])}  # cost, hot, own blocks on the path
        for i in range(region[0], region[1] + 1):
            node = node_of(i, region)
            if i == (node[0] if isinstance(node, tuple) else node) and node in best:
                cost, hot, blocks = best[node]  # control enters the node: weigh it once
                if isinstance(node, tuple):
                    best[node] = (cost + longest(node)[0], hot + longest(node)[1], blocks)
                else:
                    end = min(leaders[bisect.bisect_right(leaders, i):][:1] + [region[1] + 1])
                    best[node] = (cost + (end - i) * streaming[region], hot, blocks + [(i, end)])
            for succ in _successors(ins, labels, i):  # forward only: a back edge is a repeat
                target = node_of(succ, region) if i < succ <= region[1] else node
                if node in best and target != node and best.get(target, (-1,))[0] < best[node][0]:
                    best[target] = best[node]
        cost, hot, blocks = max(best.values(), key=lambda b: b[0])
        if not streaming[region]:
            return _one_pass_each(hot, ins)
        path = [a for a in own[region] if any(s <= a.index < e for s, e in blocks)]
        count, loads = _elements(path, itemsize), [a for a in path if a.op.startswith("ld.global")]
        return (cost / count, [{
            "label": region[2], "instructions": cost, "elements": count,
            "per_element": cost / count, "loads": len(loads),
            "load_bytes": {a.bytes for a in loads}, "span": region[:2],
            "arrays": sorted({f"{a.op[:2]} {'|'.join(sorted(a.array))}" for a in path})}]
            ) if count else (0.0, [])

    holders = [r for r in regions[1:] if _syncs(ins[r[0]:r[1] + 1]) and any(
        ".global" in a.op and r[0] <= a.index <= r[1] for a in memory)]
    row = max(holders, key=lambda r: r[1] - r[0], default=regions[0])
    per_element, hot = longest(row)
    bars = [i for i in range(row[0], row[1] + 1) if ins[i][1].startswith(_BARRIERS)]
    levels = sum(any(tree[r] and inside(r, row) and r[0] <= i <= r[1] for r in regions)
                 for i in bars)
    return {
        "instructions": len(ins),
        "memory": dict(collections.Counter((a.op, a.bytes, a.lanes) for a in memory)),
        "bar_sync": _syncs(ins, _BARRIERS), "shfl_sync": _syncs(ins, "shfl.sync"),
        "loops": [{"label": r[2], "size": r[1] - r[0] + 1, "tree": tree[r],
                   "streaming": streaming[r]} for r in regions[1:]],
        "row": {"label": row[2], "once": sum(where[i] == row for i in bars),
                "per_level": levels, "in_loops": sum(where[i] != row for i in bars) - levels,
                "shfl": _syncs(ins[row[0]:row[1] + 1], "shfl.sync")},
        "hot": hot, "per_element": per_element,
        "loads_per_element": sum(h["loads"] / h["elements"] for h in hot),
        "load_bytes": sorted(set().union(*(h["load_bytes"] for h in hot))),
        "vector_stores": any(a.op.startswith("st.global") and a.lanes > 1 for a in memory),
    }


def find_ptxas():
    """``ptxas`` from the nvidia-cuda-nvcc wheel (never PATH), or None when it is not installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    except ModuleNotFoundError:
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if pathlib.Path(root, "bin", "ptxas").is_file():
            return pathlib.Path(root, "bin", "ptxas")
    return None


def ptxas_usage(path, arch, ptxas):
    """``ptxas -v`` on a PTX file of one kernel for ``arch`` (its ``.target``, e.g. ``sm_90``).

    Returns a dict of ``registers`` and the bytes of ``stack``, ``spill_stores``
    and ``spill_loads``. Raises ``subprocess.CalledProcessError`` when ptxas
    rejects the file, ValueError when it reports other than one kernel.
    """
    run = subprocess.run([str(ptxas), "-v", f"-arch={arch}", str(path), "-o", "/dev/null"],
                         capture_output=True, text=True, check=True)
    usage, registers = _USAGE.findall(run.stderr), re.findall(r"Used (\d+) registers", run.stderr)
    if not len(usage) == len(registers) == 1:
        raise ValueError(f"{path}: ptxas reports {len(registers)} kernels, not 1:\n{run.stderr}")
    stack, stores, loads = map(int, usage[0])
    return {"registers": int(registers[0]), "stack": stack, "spill_stores": stores,
            "spill_loads": loads}


def table(rows):
    """A markdown table of ``rows``: ``(kernel, dtype, metrics, usage)``, the dicts of
    :func:`metrics` and :func:`ptxas_usage` (None without ptxas: ``?`` cells).

    Examples
    --------
    >>> print(table([("k", "float32", metrics(LOOP, 4), None)]))  # doctest: +ELLIPSIS
    | kernel | dtype | hot-loop instructions / element | bar.sync per row | ...
    |---|---|---|---|---|---|---|---|---|
    | `k` | float32 | 0.8 | 1 | 0 / 0 | 0.25 (16 B) | no | ? | ? |
    """
    head = ["kernel", "dtype", "hot-loop instructions / element", "bar.sync per row",
            "shfl.sync row / all", "global loads / element (bytes each)", "vector stores",
            "registers", "spill bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kernel, dtype, m, usage in rows:
        row, passes = m["row"], [f"{h['per_element']:.1f}" for h in m["hot"]]
        bars = " + ".join([str(row["once"])] + [f"{n}·{trips}" for n, trips in (
            (row["per_level"], "L"), (row["in_loops"], "n")) if n])
        widths = ", ".join(map(str, m["load_bytes"])) or "-"
        cells = [f"`{kernel}`", dtype, " = ".join([f"{m['per_element']:.1f}"] + [
            " + ".join(passes)] * (len(passes) > 1)), bars, f"{row['shfl']} / {m['shfl_sync']}",
            f"{m['loads_per_element']:.2f} ({widths} B)", "yes" if m["vector_stores"] else "no",
            str(usage["registers"]) if usage else "?",
            str(usage["spill_stores"] + usage["spill_loads"]) if usage else "?"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """``--arch sm_90 [--ptx-dir DIR]``: print (and return) the table of every kernel of
    ``numba_ln.ptx.KERNELS``, or of the ``<kernel>.<dtype>.ptx`` files in DIR."""
    from numba_ln import ptx
    command = argparse.ArgumentParser(prog="python tests/ptx_metrics.py",
                                      description=__doc__.split("\n")[0])
    command.add_argument("--arch", required=True, choices=ptx.ARCHES)
    command.add_argument("--ptx-dir", type=pathlib.Path, metavar="DIR", help=(
        "read DIR/<kernel>.<dtype>.ptx, as `python -m numba_ln.ptx --out DIR` writes them "
        "at any commit, instead of compiling today's kernels"))
    args = command.parse_args(argv)
    ptxas = find_ptxas()
    with tempfile.TemporaryDirectory() as workdir:
        paths = (sorted(args.ptx_dir.glob("*.ptx")) if args.ptx_dir
                 else ptx.write_ptx(workdir, args.arch))
        names = [path.name.split(".")[:2] for path in paths]
        if not paths or any(dtype not in _ITEMSIZE for _, dtype in names):
            command.error(f"no <kernel>.<dtype>.ptx files, dtype one of {', '.join(_ITEMSIZE)}")
        order = list(ptx.KERNELS) + sorted(kernel for kernel, _ in names)
        rows = []
        for path, (kernel, dtype) in sorted(zip(paths, names), key=lambda p: (
                order.index(p[1][0]), list(_ITEMSIZE).index(p[1][1]))):
            code = path.read_text()
            if f".target {args.arch}" not in code:
                command.error(f"{path} is not PTX for {args.arch}")
            usage = ptxas_usage(path, args.arch, ptxas) if ptxas else None
            rows.append((kernel, dtype, metrics(code, _ITEMSIZE[dtype]), usage))
    print(text := table(rows))
    return text


if __name__ == "__main__":
    main()
