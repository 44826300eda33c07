"""YAML files people edit by hand, checked with positions: every problem names FILE:LINE:COL.

The policy, price overrides and MDM site configs all load through here: `load_yaml_with_marks`
keeps where each value stood (and flags duplicate keys, which YAML silently overwrites), and
`schema_problems` turns JSON Schema errors into positioned, readable problems.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import jsonschema
import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    col: int
    message: str
    warning: bool = False

    def render(self, file: str) -> str:
        return f"{file}:{self.line}:{self.col}: {'warning: ' if self.warning else ''}{self.message}"


# --- YAML with positions ---------------------------------------------------------------------

Marks = dict[tuple, tuple[int, int]]  # path -> (line, col), 1-based


class _Builder:
    """Turn a composed YAML node tree into plain data, remembering where each value stood."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.marks: Marks = {}
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = self.loader.construct_object(knode, deep=True) if isinstance(knode, yaml.ScalarNode) else None
                if isinstance(key, (date, datetime)):
                    key = key.isoformat()
                if key in out:
                    line, col = knode.start_mark.line + 1, knode.start_mark.column + 1
                    self.problems.append(Problem(line, col, f"duplicate key {key!r}"))
                self.marks[(*path, key, "<key>")] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
                out[key] = self.build(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        return value.isoformat() if isinstance(value, (date, datetime)) else value


def load_yaml_with_marks(text: str) -> tuple[Any, Marks, list[Problem]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, {}, [Problem(line, col, f"YAML syntax: {e.problem or e}")]
    finally:
        loader.dispose()
    if node is None:
        return {}, {(): (1, 1)}, []
    b = _Builder(loader)
    return b.build(node), b.marks, b.problems


def mark(marks: Marks, path: tuple, key_of: bool = False) -> tuple[int, int]:
    """Closest known position for a path (the key's own position when `key_of`)."""
    if key_of and (*path, "<key>") in marks:
        return marks[(*path, "<key>")]
    while path and path not in marks:
        path = path[:-1]
    return marks.get(path, (1, 1))



# An explainer may give a friendlier message (str) or a whole Problem (to choose its position);
# None keeps the schema's own message.
Explain = Callable[[jsonschema.ValidationError, tuple, str], "str | Problem | None"]


def schema_problems(
    validator: jsonschema.Validator,
    doc: Any,
    marks: Marks,
    explain: Explain | None = None,
    list_known: bool = False,
) -> list[Problem]:
    """Every schema error as a Problem at the offending value (or key, for unknown keys)."""
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(err.absolute_path)
        where = ".".join(map(str, path)) or "top level"
        if err.validator == "additionalProperties":
            known = err.schema.get("properties", {})
            hint = f" (known: {', '.join(known)})" if list_known else ""
            for k in [k for k in (err.instance or {}) if k not in known]:
                out.append(Problem(*mark(marks, (*path, k), key_of=True), f"unknown key {k!r} in {where}{hint}"))
            continue
        said = explain(err, path, where) if explain else None
        if isinstance(said, Problem):
            out.append(said)
        else:
            out.append(Problem(*mark(marks, path), said or f"{where}: {err.message}"))
    return out
