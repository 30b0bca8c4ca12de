"""The code's layout rules from ARCHITECTURE.md ("One place per fact"), checked on the sources:
no two modules of one crate import each other, directly or around a circle, and no Rust source
file outside tests is over 600 lines."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = ["schemas", "telemetry", "collector", "aggregator", "simulator", "tests"]
MAX_LINES = 600


def sources(crate):
    """The crate's library modules (`a::b` for src/a/b.rs), unit-test files and binaries aside."""
    src = ROOT / crate / "src"
    mods = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).with_suffix("")
        if rel.parts[0] == "bin" or rel.name == "tests" or str(rel) in ("lib", "main"):
            continue
        mods["::".join(rel.parts)] = path
    return mods


def code(path):
    """The file without comments and without its `#[cfg(test)]` part."""
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//.*", "", text)


def expand(tree):
    """The paths of a `use` tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.groups()
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [path for part in parts if part for path in expand(prefix + part)]


def imports(module, text, mods):
    """The crate's other modules that `module`'s code names (through `crate::` or `super::`).
    A parent declaring `mod child;` is not an import of the child."""
    parent = module.rsplit("::", 1)[0] if "::" in module else ""
    paths = [p for tree in re.findall(r"\buse\s+([^;]+);", text) for p in expand(tree)]
    paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
    found = set()
    for path in paths:
        parts = path.split("::")
        if parts[0] == "crate":
            parts = parts[1:]
        elif parts[0] == "super":
            parts = (parent.split("::") if parent else []) + parts[1:]
        else:
            continue
        for k in range(len(parts), 0, -1):
            target = "::".join(parts[:k])
            if target in mods:
                if target != module:
                    found.add(target)
                break
    return found


def cycle(graph):
    """One import circle in `graph`, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def import_graph(crate):
    mods = sources(crate)
    return {m: imports(m, code(path), mods) for m, path in mods.items()}


def test_no_module_imports_another_that_imports_it_back():
    for crate in CRATES:
        graph = import_graph(crate)
        assert graph, f"{crate}: no modules found"
        circle = cycle(graph)
        assert circle is None, f"{crate}: import circle {' -> '.join(circle)}"


def test_the_check_sees_imports_and_circles():
    """The parser reads grouped, nested and `super::` imports, and a circle is found."""
    mods = {"a": None, "b": None, "b::c": None, "d": None}
    text = "use crate::{a::X, b::{c::Y}};\nuse super::Z;\nfn f() { crate::d::g() }"
    assert imports("b::e", text, mods) == {"a", "b::c", "b", "d"}
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph("aggregator")
    assert "consumer::partitions" in graph and "writer" in graph["consumer::partitions"]


def test_no_source_file_outside_tests_is_over_600_lines():
    long = []
    for crate in CRATES:
        if crate == "tests":
            continue
        for path in sorted((ROOT / crate / "src").rglob("*.rs")):
            if path.name == "tests.rs":
                continue
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}: {lines}")
    assert not long, f"over {MAX_LINES} lines: {long}"
