"""YAML files people edit by hand, checked with positions: every problem names FILE:LINE:COL.

The policy, price overrides and MDM site configs all load through here: `load_yaml_with_marks`
keeps where each value stood (and flags duplicate keys, which YAML silently overwrites, and
`.nan` / `.inf`, which no limit, rate or setting means), and
`schema_problems` turns JSON Schema errors into positioned, readable problems.
"""

from __future__ import annotations

import codecs
import itertools
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # annotations only: jsonschema is imported by whoever builds a validator
    import jsonschema


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    col: int
    message: str
    warning: bool = False

    def render(self, file: str) -> str:
        return f"{file}:{self.line}:{self.col}: {'warning: ' if self.warning else ''}{self.message}"


# --- YAML with positions ---------------------------------------------------------------------

class Marks(dict[tuple, tuple[int, int]]):
    """path -> (line, col), 1-based; `texts`: path -> source text of a plain scalar that YAML
    typed as something other than text (``NO`` -> False), so checks can say "quote it"."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.texts: dict[tuple, str] = {}


class LazyMarks(Marks):
    """Positions (and `texts`) built by `build` only when a check first asks for one: a clean
    document needs none, and building them is most of a big policy's parse after libyaml's
    (10,000 users: 61,000 positions). Every way of reading or writing the mapping (in, [], get,
    len, iteration, items, ==, |, dict(m), copy, pickle, texts, and every dict method that
    changes it) sees all of them, and what is set is not overwritten by built positions
    (nineteenth review, F2). A second thread waits for the build; a build that raises is tried
    again on the next read, never left an empty mapping (twenty-sixth review, F3/F4). Only
    dict's own methods called on it explicitly (dict.get(m, k)) see it unbuilt."""

    def __init__(self, build: Callable[[], Marks]) -> None:
        dict.__init__(self)
        self._texts: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._build: Callable[[], Marks] | None = build

    def _load(self) -> None:
        if self._build is not None:
            with self._lock:
                build = self._build
                if build is not None:
                    built = build()
                    dict.update(self, built.items())
                    self._texts = built.texts
                    self._build = None

    @property  # type: ignore[override]
    def texts(self) -> dict[tuple, str]:
        self._load()
        return self._texts

    @texts.setter
    def texts(self, value: dict[tuple, str]) -> None:
        self._load()
        self._texts = value

    def __reduce__(self) -> tuple:  # copies and pickles: built, as a plain Marks (no build to carry)
        self._load()
        return _marks_of, (dict(self), dict(self._texts))


def _marks_of(positions: dict[tuple, tuple[int, int]], texts: dict[tuple, str]) -> Marks:
    marks = Marks(positions)
    marks.texts = texts
    return marks


def _built_first(name: str) -> Any:
    base = getattr(dict, name)

    def method(self: LazyMarks, *args: Any, **kw: Any) -> Any:
        self._load()
        for other in args:  # m == other, m | other: dict reads a LazyMarks argument's storage directly
            if isinstance(other, LazyMarks):
                other._load()
        return base(self, *args, **kw)

    method.__name__ = method.__qualname__ = name
    return method


for _name in ("__contains__", "__getitem__", "get", "__iter__", "__len__", "__eq__", "__ne__", "__repr__",
              "keys", "values", "items", "copy", "__setitem__", "__delitem__", "setdefault", "pop", "popitem",
              "update", "clear", "__or__", "__ror__", "__ior__", "__reversed__"):
    setattr(LazyMarks, _name, _built_first(_name))


_STR_TAG = "tag:yaml.org,2002:str"
_Built = tuple[Any, str | None, bool]  # a scalar's value, the problem's text or None, whether YAML built text
_Memo = dict[tuple[str, str], _Built]  # (tag, source text) -> what _construct made of it, for one load
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null", "timestamp"))
_TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", type(None): "null"}


class _Builder:
    """Turn a composed YAML node tree into plain data, remembering where each value stood.

    Names are read exactly as written. YAML 1.1 types plain scalars by their look: ``NO`` and
    ``on`` become booleans, ``010`` the number 8, ``2026-02-30`` a date error. Mapping keys in our
    files are always names (users, workspaces, keys, sinks, plans, rate names), so a key keeps
    its source text. A value that YAML typed as something other than text keeps its source text in
    `texts`, so a schema that wanted a name can say "quote it" at the right position. A value YAML
    cannot construct (an impossible date, a bad tag) becomes a positioned problem, never an
    exception.
    """

    def __init__(self, loader: yaml.SafeLoader, memo: _Memo) -> None:
        self.loader = loader
        self.memo = memo
        self.marks = Marks()
        self.problems: list[Problem] = []

    def _pos(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _key(self, knode: yaml.Node) -> Any:
        if not isinstance(knode, yaml.ScalarNode):
            self.problems.append(Problem(*self._pos(knode), "a key must be a plain name, not a list or mapping"))
            return None
        return knode.value  # the source text: `NO`, `on`, `2026-01-01` and `010` stay names

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        if node.tag == _STR_TAG:  # what construct_yaml_str returns, without construct_object's bookkeeping
            return node.value
        value, problem, typed = self._make(node)
        if problem is not None:
            where = ".".join(map(str, path)) or "top level"
            self.problems.append(Problem(*self._pos(node), f"{where}: {problem}"))
            return node.value
        if typed:
            self.marks.texts[path] = node.value
        return value

    def _make(self, node: yaml.ScalarNode) -> _Built:
        """(value, the problem's text after its path or None, whether a plain scalar was typed).
        Built once however many aliases name the node (thirty-first review, F2): plain tags through
        the load's memo, named tags through construct_object's own per-node memo (a tag it refuses
        raises again per alias, a cost the alias bounds already cap by characters)."""
        if node.tag in _PLAIN_TAGS:
            value, problem, text = _construct(self.loader, node.tag, node.value, self.memo)
            return value, problem, problem is None and not node.style and not text  # plain: None, or "" (libyaml)
        try:  # named tags (!!binary, !!set, ...): construct_object, which memoizes per node
            value = self.loader.construct_object(node, deep=True)
        except Exception as e:  # bad !!tags, ...: a positioned problem
            return None, _cannot_read(node.value, e), False
        return value, None, not node.style and not isinstance(value, str)

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.marks[path] = self._pos(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = self._key(knode)
                if key in out:
                    self.problems.append(Problem(*self._pos(knode), f"duplicate key {key!r}"))
                self.marks[(*path, key, "<key>")] = self._pos(knode)
                out[key] = self.build(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
        return self._scalar(node, path)


# libyaml's parser composes the same node tree, marks included, about 10x faster than PyYAML's
# own (a 10,000-user policy: seconds -> a fraction); any error is read again by the pure-Python
# loader, so problems keep PyYAML's exact wording and positions.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def load_yaml_with_marks(text: str) -> tuple[Any, Marks, list[Problem]]:
    """Parse one YAML document; syntax and value errors come back as positioned problems."""
    memo: _Memo = {}  # each scalar built once per load, whichever readers meet it (thirty-second review, F3)
    if _FAST_LOADER is not None:
        try:  # a plain document straight from libyaml's events; positions composed if a check asks
            return _from_events(text, memo), LazyMarks(lambda: _composed(text, {}, counted=True)[1]), []
        except Exception:  # _Unusual, a syntax error, anything: composed and read as before
            pass
    return _composed(text, memo)


def _composed(text: str, memo: _Memo, counted: bool = False) -> tuple[Any, Marks, list[Problem]]:
    """`load_yaml_with_marks` through a composed node tree: libyaml's, else PyYAML's own.
    `counted`: the text is known to hold no alias (read from its events), so `_repeated` is skipped.
    A later positions build (LazyMarks) gets a memo of its own, so no built value outlives the load."""
    if _FAST_LOADER is not None:
        fast = None
        try:
            fast = _FAST_LOADER(text)
            node = fast.get_single_node()
        except Exception:  # a syntax error (or anything odd): the pure-Python loader says it exactly
            fast = None
        if fast is not None:
            fast.dispose()
            if not counted and (repeated := _repeated(text, node)) is not None:
                return None, Marks(), [repeated]
            if node is not None:
                try:
                    doc = _plain(fast, node, memo)
                except (_Unusual, RecursionError):  # a problem to place, or a tag only construct_object reads
                    return _built(fast, node, memo)
                return doc, LazyMarks(lambda: _built(fast, node, {})[1]), []
            return _built(fast, node, memo)
    try:  # the characters are checked here, when the loader is made (a NUL, ESC, DEL; UTF-16 read as UTF-8)
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        return None, Marks(), [Problem(*_reader_position(text, e), f"YAML: unacceptable character "
                                       f"#x{e.character:04x}: {e.reason}")]
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, Marks(), [Problem(line, col, f"YAML syntax: {e.problem or e}")]
    except yaml.YAMLError as e:  # anything else YAML refuses: its position when it has one
        line, col = (getattr(e, "line", 0) + 1, getattr(e, "column", 0) + 1)
        return None, Marks(), [Problem(line, col, f"YAML: {e}")]
    except RecursionError:
        return None, Marks(), [Problem(1, 1, _TOO_DEEP)]
    finally:
        loader.dispose()
    if not counted and (repeated := _repeated(text, node)) is not None:
        return None, Marks(), [repeated]
    return _built(loader, node, memo)


ALIAS_VALUES = 1_000_000  # values aliases may add to a document by repeating what their anchors name
ALIAS_CHARACTERS = 10_000_000  # characters of text (scalars, keys) they may add
ALIAS_LEVELS = 10_000_000  # levels of nesting they may add: each value counts the levels it sits under
LEVELS = 10_000_000  # levels of nesting in all, aliases written out: what positions (one path per value) cost


def _repeated(text: str | bytes, root: yaml.Node | None) -> Problem | None:
    """A problem when aliases make the document more than ALIAS_VALUES values, ALIAS_CHARACTERS
    characters or ALIAS_LEVELS levels of nesting larger than what it writes out, or when its
    values, aliases written out, sit more than LEVELS levels deep in all; None otherwise.

    Ten lines of nested aliases ("billion laughs": each names the one before ten times) stand for
    10^9 values, and building them took minutes and gigabytes to fail (six levels: 0.4 s; each
    level 10x more). Values alone are not the whole cost (thirty-first review): whoever writes
    the document out (the parse cache's JSON, a schema message quoting a value) pays for its
    characters, so a 10 KB file repeating a 10,000-character string 10^4 times was 100 MB
    (F3); positions are kept per path, so a value costs as many path items as it is deep, and a
    600-deep anchor named 1,000 times took 8.6 s and 1.9 GB (F5). Counted over the node tree's
    distinct nodes, so the count costs what the document's own size does. An alias inside what it
    names (``&a [*a]``) counts as one value and the count goes on, so a cycle cannot switch it off
    for the rest of the document (F1); under the bounds the build reports the cycle, as before.
    A list written out 900 levels deep costs the same positions without any alias: 200 KB took
    5.3 s and 793 MB to report one problem (thirty-second review, F1), hence LEVELS. A text
    without a `*` holds no alias: only its written levels are summed, without the bookkeeping."""
    if root is None:
        return None
    if ("*" if isinstance(text, str) else b"*") not in text:
        return _too_deep(root, _written_levels)
    # per node, its expansion: (values, characters, levels below it summed over its values)
    sized: dict[int, tuple[int, int, int]] = {}
    uses: dict[int, int] = {}  # how many places name a node: its anchor's own, then each alias
    started: dict[int, yaml.Node] = {}
    written = [0, 0]  # what the distinct nodes alone hold: characters, levels
    # (node, its depth), or (node, -1) when its kids are sized; walked in document order, so each node
    # is first met (and its depth written) at its anchor, never at a deeper or shallower alias (32nd review, F5)
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        key = id(node)
        if depth < 0:  # a kid started and not sized is an ancestor (a cycle): one value
            values, chars, levels = 1, 0, 0
            for kid in _children(node):
                v, c, lv = sized.get(id(kid), (1, 0, 0))
                values, chars, levels = values + v, chars + c, levels + lv + v
            sized[key] = values, chars, levels
        elif key not in started:  # (started already: pushed twice, and sized by the time it pops)
            started[key] = node
            written[1] += depth
            if isinstance(node, yaml.ScalarNode):
                written[0] += len(node.value)
                sized[key] = 1, len(node.value), 0
                continue
            stack.append((node, -1))
            for kid in reversed(_children(node)):  # the first kid on top: nodes met where they are written
                uses[id(kid)] = uses.get(id(kid), 0) + 1
                if id(kid) not in started:
                    stack.append((kid, depth + 1))
    values, chars, levels = sized[id(root)]
    added = values - len(started), chars - written[0], levels - written[1]
    for i, (bound, what) in enumerate(((ALIAS_VALUES, "values"), (ALIAS_CHARACTERS, "characters of text"),
                                       (ALIAS_LEVELS, "levels of nesting (a value counts each level it sits under)"))):
        if added[i] > bound:
            weigh = (lambda n: sized[id(n)][i] * uses[id(n)]) if i < 2 else (
                lambda n: (sized[id(n)][2] + sized[id(n)][0]) * uses[id(n)])
            worst = max((n for k, n in started.items() if uses.get(k, 0) > 1), key=weigh)
            return Problem(worst.start_mark.line + 1, worst.start_mark.column + 1,
                           f"YAML: aliases repeat {added[i]:,} {what} (at most {bound:,}): what this anchor names "
                           f"({sized[id(worst)][i]:,} {what.split(' (')[0]}) is named again by "
                           f"{uses[id(worst)] - 1} aliases, and nested aliases multiply (\"billion laughs\"); "
                           "write the values out or nest fewer aliases")
    return _too_deep(root, lambda n: sized[id(n)][2] + sized[id(n)][0])


def _too_deep(root: yaml.Node, levels_of: Callable[[yaml.Node], int]) -> Problem | None:
    """A problem when the root's values sit more than LEVELS levels deep in all (`levels_of` a
    top-level node: the levels its values sit under, counted from the root), placed at the
    top-level value that holds most; None otherwise."""
    tops = [(levels_of(top), top) for top in _children(root)]
    total = sum(levels for levels, _ in tops)
    if total <= LEVELS:
        return None
    most, top = max(tops, key=lambda pair: pair[0])
    return Problem(top.start_mark.line + 1, top.start_mark.column + 1,
                   f"YAML: nested too deeply: values sit {total:,} levels deep in all (at most {LEVELS:,}; each "
                   f"value counts the levels it sits under, as its position does); this value holds {most:,} of them")


def _written_levels(top: yaml.Node) -> int:
    """The levels a top-level node's values sit under (itself: 1), in a tree without aliases."""
    levels, stack = 0, [(top, 1)]
    while stack:
        node, depth = stack.pop()
        levels += depth
        if not isinstance(node, yaml.ScalarNode):
            stack.extend((kid, depth + 1) for kid in _children(node))
    return levels


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _reader_position(text: str | bytes, error: yaml.reader.ReaderError) -> tuple[int, int]:
    """Line and column (1-based) where PyYAML's reader refused `text`, lines broken as it breaks
    them. For bytes the reader's position is a byte offset when they did not decode and a
    character offset when a decoded character is refused (a NUL; UTF-32 read as UTF-16)."""
    index = error.position
    if isinstance(text, bytes):  # decoded as the reader decodes, its byte-order mark kept: UTF-16 by its mark, else UTF-8
        codec = {codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be"}.get(text[:2], "utf-8")
        if error.encoding == "unicode":
            text = text.decode(codec, "replace")
        else:
            text = text[:index].decode(codec, "replace")
            index = len(text)
    line, col, i = 1, 1, 0
    while i < index:
        ch = text[i]
        if ch in "\n\x85\u2028\u2029" or (ch == "\r" and text[i + 1:i + 2] != "\n"):
            line, col = line + 1, 1
        elif ch != "\ufeff":
            col += 1
        i += 1
    return line, col


_INT_TAG = "tag:yaml.org,2002:int"
BASE_60_CHARS = 64  # YAML 1.1's 1:30-style integers: PyYAML builds them in time quadratic in their length


def _long_base_60(tag: str, value: str) -> bool:
    """A YAML 1.1 sexagesimal integer (``190:20:30``) longer than BASE_60_CHARS: refused unbuilt,
    since PyYAML multiplies a growing int once per group (1 MB: 97 s; thirty-second review, F2)."""
    return tag == _INT_TAG and len(value) > BASE_60_CHARS and ":" in value


class _Unusual(Exception):
    """The document holds something `_Builder` reports as a problem or reads specially."""


def _scalar_value(loader: Any, tag: str, value: str, memo: _Memo) -> Any:
    """A plain scalar's value as `_plain` builds it; _Unusual where `_Builder` would not."""
    if tag not in _PLAIN_TAGS:
        raise _Unusual
    built, problem, _text = _construct(loader, tag, value, memo)
    if problem is not None:
        raise _Unusual
    return built


def _construct(loader: Any, tag: str, value: str, memo: _Memo) -> _Built:
    """A plain scalar (a tag in _PLAIN_TAGS) as every reader builds it: (value, the problem's text
    after its path or None, whether YAML built text), looked up in this load's `memo` first, so
    a scalar the events could not read is not built again by `_plain` and `_Builder`, nor once per
    alias or repeat (thirty-second review, F3). The values are immutable (int, float, bool, None,
    text), so sharing them is safe."""
    key = (tag, value)
    if (made := memo.get(key)) is None:
        made = memo[key] = _judged(loader, tag, value)
    return made


def _judged(loader: Any, tag: str, value: str) -> _Built:
    """`_construct` unmemoized: the one place a scalar is judged: impossible dates, .nan / .inf,
    ints past str()'s limit, long base-60 ints (refused unbuilt). The scalar constructors return
    values outright: called directly, they skip construct_object's per-node memo and recursion
    guard (~40% of a 10,000-user policy's build, issue 18)."""
    if _long_base_60(tag, value):
        return None, (f"{value[:24]}... is too long a base-60 number to read (1:30-style numbers "
                      f"up to {BASE_60_CHARS} characters; quote it if it is text)"), False
    try:
        built = loader.yaml_constructors[tag](loader, yaml.ScalarNode(tag, value))
    except Exception as e:  # impossible dates, ...: a positioned problem
        return None, _cannot_read(value, e), False
    if isinstance(built, float) and not math.isfinite(built):  # .nan breaks every comparison; .inf is no limit
        return None, f"{value} is not a finite number (leave a limit out for none)", False
    if type(built) is int and _unprintable(built):  # 0xfff... past str()'s limit: every repr would raise
        return None, f"{value[:24]}... is too large a number to read (over {sys.get_int_max_str_digits()} digits)", False
    if isinstance(built, (date, datetime)):
        return built.isoformat(), None, False
    return built, None, isinstance(built, str)


def _cannot_read(value: str, e: Exception) -> str:
    why = getattr(e, "problem", None) or str(e) or type(e).__name__
    return _clipped(f"cannot read {value!r}: {why}")  # a 900 KB value is not quoted whole, once per alias


def _unprintable(value: int) -> bool:
    """An int str() refuses (more digits than sys.get_int_max_str_digits(); 0x, 0o, 0b and 1:30
    integers are built without that limit): a problem, not a ValueError wherever it is printed
    (a schema message, Decimal(str(v))). No int under 2,000 bits is refused (the limit is >= 640)."""
    if value.bit_length() <= 2000:
        return False
    try:
        str(value)
    except ValueError:
        return True
    return False


_NO_KEY = object()  # a mapping waiting for its next key
# Our files nest a few levels; past this the composed read answers (its RecursionError is a problem)
_EVENTS_DEPTH = 64


def _from_events(text: str, memo: _Memo) -> Any:
    """What `_plain` builds, read from libyaml's event stream without composing nodes: a
    10,000-user policy's parse ~2.5x faster (0.39 -> 0.15 s on the 2-core machine, issue 18).
    Only for one document of mappings, sequences and untagged scalars without anchors or aliases;
    anything else (a tag, an anchor, a second document, a syntax error) raises, and the caller
    composes the text as before, so what it reports (a runaway nesting included) is unchanged."""
    loader = _FAST_LOADER(text)
    try:
        get, resolve = loader.get_event, loader.resolve
        if not isinstance(get(), yaml.StreamStartEvent) or not isinstance(get(), yaml.DocumentStartEvent):
            raise _Unusual
        stack: list[tuple[Any, Any]] = []
        into: Any = None  # the open mapping or sequence (None: the document's top)
        key: Any = _NO_KEY
        while True:
            event = get()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.anchor is not None or event.tag is not None:
                    raise _Unusual
                if key is _NO_KEY and type(into) is dict:  # a key: its text, as _plain keeps it
                    if event.value in into:
                        raise _Unusual  # a duplicate: the positioned build reports it
                    key = event.value
                    continue
                tag = resolve(yaml.ScalarNode, event.value, event.implicit)
                value = event.value if tag == _STR_TAG else _scalar_value(loader, tag, event.value, memo)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if (event.anchor is not None or event.tag is not None or (key is _NO_KEY and type(into) is dict)
                        or len(stack) >= _EVENTS_DEPTH):
                    raise _Unusual  # tagged, anchored, a mapping or sequence as a key, or deeper than files go
                stack.append((into, key))
                into, key = ({} if kind is yaml.MappingStartEvent else []), _NO_KEY
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                value = into
                into, key = stack.pop()
            else:  # an alias, or anything else
                raise _Unusual
            if into is None:
                break
            if type(into) is dict:
                into[key] = value
                key = _NO_KEY
            else:
                into.append(value)
        if not isinstance(get(), yaml.DocumentEndEvent) or not isinstance(get(), yaml.StreamEndEvent):
            raise _Unusual  # a second document: get_single_node's error, placed by the composed read
        return value
    finally:
        loader.dispose()


def _plain(loader: Any, node: yaml.Node, memo: _Memo) -> Any:
    """What `_Builder(loader).build(node)` returns, without recording a position: ~3x faster on a
    10,000-user policy (issue 18). Raises _Unusual wherever that build would add a problem (a
    duplicate or non-name key, a value YAML cannot construct, .nan / .inf) or leave plain
    scalars and the named tags below (`!!binary`, `!!set`, ...), so those still get the
    positioned build and report exactly as before. A module-level recursion, not a nested
    closure: a closure naming itself is a reference cycle that kept the load's memo alive until
    the cyclic GC ran (thirty-third review, F1)."""
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode) or knode.value in out:
                raise _Unusual
            out[knode.value] = _plain(loader, vnode, memo)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(loader, v, memo) for v in node.value]
    if node.tag == _STR_TAG:
        return node.value
    return _scalar_value(loader, node.tag, node.value, memo)  # once per value, however many aliases (F2, F3)


def _built(loader: Any, node: yaml.Node | None, memo: _Memo) -> tuple[Any, Marks, list[Problem]]:
    if node is None:
        return {}, Marks({(): (1, 1)}), []
    b = _Builder(loader, memo)
    try:
        doc = b.build(node)
    except RecursionError:  # before: escaped as an exception (a reload unrecorded; a start's configure)
        return None, Marks(), [Problem(*b._pos(node), _TOO_DEEP)]
    return doc, b.marks, b.problems


_TOO_DEEP = "YAML: nested too deeply to read, or an alias inside what it names (such as &a [*a])"


def quote_hint(path: tuple, text: str, value: Any) -> str:
    """The message for a name that YAML read as another type."""
    where = ".".join(map(str, path)) or "top level"
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    return f"{where}: YAML reads {text} as {kind} ({value!r}), not as the text {text!r}; quote it: \"{text}\""


def mark(marks: Marks, path: tuple, key_of: bool = False) -> tuple[int, int]:
    """Closest known position for a path (the key's own position when `key_of`)."""
    if key_of and (*path, "<key>") in marks:
        return marks[(*path, "<key>")]
    while path and path not in marks:
        path = path[:-1]
    return marks.get(path, (1, 1))



def _typed_name(err: jsonschema.ValidationError, texts: dict[tuple, str]) -> tuple[tuple, Any] | None:
    """(path, value) when a schema error is about a value YAML typed from text (``NO`` -> False),
    looking inside oneOf/anyOf alternatives (a holder given as a name or as {user: ...})."""
    if not texts:
        return None
    pending = [err]
    while pending:
        e = pending.pop()
        path = tuple(e.absolute_path)
        if path in texts and e.validator in ("type", "oneOf", "anyOf"):
            return path, e.instance
        pending.extend(e.context or ())
    return None


# An explainer may give a friendlier message (str) or a whole Problem (to choose its position);
# None keeps the schema's own message.
Explain = Callable[["jsonschema.ValidationError", tuple, str], "str | Problem | None"]


def schema_problems(
    validator: jsonschema.Validator,
    doc: Any,
    marks: Marks,
    explain: Explain | None = None,
    list_known: bool = False,
) -> list[Problem]:
    """Every schema error as a Problem at the offending value (or key, for unknown keys); a message
    longer than MESSAGE_CHARS keeps its start and end (jsonschema quotes the whole value). Past
    MAX_PROBLEMS, the first found are listed and a last problem says there are more."""
    out: list[Problem] = []
    texts = getattr(marks, "texts", {})
    errors = list(itertools.islice(validator.iter_errors(doc), MAX_PROBLEMS + 1))
    for err in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        if len(out) > MAX_PROBLEMS:
            break
        path = tuple(err.absolute_path)
        where = ".".join(map(str, path)) or "top level"
        said = explain(err, path, where) if explain else None  # a caller's own wording comes first
        if isinstance(said, Problem):
            out.append(said)
            continue
        if said:
            out.append(Problem(*mark(marks, path), said))
            continue
        typed = _typed_name(err, texts)
        if typed is not None:
            out.append(Problem(*mark(marks, typed[0]), quote_hint(typed[0], texts[typed[0]], typed[1])))
            continue
        if err.validator == "additionalProperties":
            known = err.schema.get("properties", {})
            # a short list (a budget's windows: hour, day, week, month) is always worth naming
            hint = f" (known: {', '.join(known)})" if list_known or 0 < len(known) <= SHORT_KNOWN else ""
            for k in itertools.islice((k for k in (err.instance or {}) if k not in known), MAX_PROBLEMS + 1):
                out.append(Problem(*mark(marks, (*path, k), key_of=True), f"unknown key {k!r} in {where}{hint}"))
            continue
        out.append(Problem(*mark(marks, path), f"{where}: {err.message}"))
    listed = [replace(p, message=_clipped(p.message)) for p in out[:MAX_PROBLEMS]]
    if len(out) > MAX_PROBLEMS or len(errors) > MAX_PROBLEMS:
        listed.append(replace(listed[-1], message=f"more than {MAX_PROBLEMS:,} problems: the first "
                              f"{MAX_PROBLEMS:,} found are listed; fix them and check again"))
    return listed


SHORT_KNOWN = 6  # an object with at most this many keys names them all in an unknown key's message
MESSAGE_CHARS = 1_000  # a problem's message: a value 80 users name through one alias was an 803 MB message (F4)
# problems listed per file: a 17 KB policy naming 1,000 unknown keys from 490 users was 490,001 (32nd review, F4)
MAX_PROBLEMS = 1_000


def _clipped(message: str) -> str:
    """`message`, or past MESSAGE_CHARS its first and last MESSAGE_CHARS // 2 characters:
    jsonschema's own messages put what is wrong at the end ("[...] is not of type 'object'"), a
    value at the start; so does `_cannot_read`."""
    if len(message) <= MESSAGE_CHARS:
        return message
    half = MESSAGE_CHARS // 2
    return f"{message[:half]} ... ({len(message) - 2 * half:,} characters left out) ... {message[-half:]}"
