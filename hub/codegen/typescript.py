"""JSON Schema (as msgspec writes it) to TypeScript declarations.

Named components (`$defs`) become `export interface` (objects) or `export type` (enums,
unions); everything else is rendered inline. `$ref`s are emitted as type names and never
followed, so recursive types terminate; inline nesting is bounded by `MAX_DEPTH`. Fields in
`required` are required, the rest optional (`name?:`), because a publisher may omit a field
that has a default and the hub forwards its JSON as sent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "SchemaTranslationError",
    "TypeScriptTranslator",
    "doc_comment",
    "literal",
    "property_name",
]

MAX_DEPTH: Final = 64  # inline nesting levels: msgspec schemas nest a few, a loop would not end

_IDENTIFIER: Final = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
# Words a type name cannot be, and the global types the declarations refer to.
_RESERVED_TYPE_NAMES: Final = frozenset(
    """any bigint boolean break case catch class const continue debugger default delete do
    else enum export extends false finally for function if import in instanceof never new null
    number object return string super switch symbol this throw true try typeof undefined
    unknown var void while with implements interface let package private protected public
    static yield Omit Record Array Promise""".split()
)
# Keywords shown as doc tags: the constraints TypeScript types cannot carry.
_DOC_TAGS: Final = (
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "contentEncoding",
)

_LINE_WIDTH: Final = 100  # a longer `export type X = A | B | ...` gets one member a line
# Operator precedence of a rendered type: a union must be parenthesised inside `T[]`, `A & B`.
_UNION, _INTERSECTION, _PRIMARY = 0, 1, 2


class SchemaTranslationError(ValueError):
    """A schema the translator cannot express in TypeScript; the message says where."""


def property_name(name: str) -> str:
    """`name` as an object member name: bare when it is an identifier, else a quoted string."""
    return name if _IDENTIFIER.fullmatch(name) else json.dumps(name)


def literal(value: Any) -> str:
    """A JSON scalar as a TypeScript literal type."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaTranslationError(f"{value!r} has no TypeScript literal type")
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII-only, escapes quotes, backslashes and controls
    raise SchemaTranslationError(f"enum value {value!r} is not a JSON scalar")


def doc_comment(lines: Iterable[str], indent: str = "") -> list[str]:
    """A `/** ... */` block (empty when there is nothing to say); `*/` in text is defused."""
    text = [line.rstrip().replace("*/", "*\\/") for block in lines for line in block.split("\n")]
    while text and not text[-1]:
        text.pop()
    while text and not text[0]:
        text.pop(0)
    if not text:
        return []
    if len(text) == 1:
        return [f"{indent}/** {text[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in text), f"{indent} */"]


def _type_name(component: str, taken: set[str]) -> str:
    """A TypeScript identifier for a component name such as `Box[int]` or `pkg.mod.Job`."""
    name = re.sub(r"[^A-Za-z0-9_$]", "_", component) or "_"
    if name[0].isdigit() or name in _RESERVED_TYPE_NAMES:
        name = f"_{name}"
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


class TypeScriptTranslator:
    """Translates one set of components (what `msgspec.json.schema_components` returned) and
    schemas that refer to them. `taken` are names already used in the same file."""

    def __init__(
        self,
        components: Mapping[str, Any],
        *,
        ref_prefix: str = "#/$defs/",
        taken: Iterable[str] = (),
    ) -> None:
        self.components = components
        self.ref_prefix = ref_prefix
        self.taken = set(taken)
        # Names that are identifiers already keep them; the rest are sanitised after them, in
        # sorted order, so the suffix a clash gets does not depend on dict order.
        order = sorted(components, key=lambda c: (_IDENTIFIER.fullmatch(c) is None, c))
        self.names = {c: _type_name(c, self.taken) for c in order}

    def type_of(self, schema: Any) -> str:
        """The TypeScript type of `schema`, inline."""
        return self._render(schema, 0, "$")[0]

    def declarations(self) -> list[str]:
        """One `export interface` / `export type` block per component, sorted by name."""
        order = sorted(self.names, key=lambda c: self.names[c])
        return [self.declaration(self.names[c], self.components[c], c) for c in order]

    def declaration(self, name: str, schema: Any, origin: str = "") -> str:
        """`schema` declared as `name`: an interface when it is an object with properties."""
        notes: list[str] = []
        if isinstance(schema, dict):
            title = schema.get("title")
            if isinstance(title, str) and title != name:
                notes.append(title)
            if isinstance(schema.get("description"), str):
                notes.append(schema["description"])
        head = doc_comment(notes)
        where = f"$defs[{origin or name!r}]"
        if _is_object(schema) and "properties" in schema:
            body = [line for m in self._members(schema, 0, where, block=True) for line in m]
            return "\n".join([*head, f"export interface {name} {{", *body, "}"])
        text = self._render(schema, 0, where)[0]
        line = f"export type {name} = {text};"
        union = _top_level_members(text)
        if len(line) <= _LINE_WIDTH or len(union) < 2:
            return "\n".join([*head, line])
        # A long union, one member a line: diffs of the generated file stay readable.
        return "\n".join([*head, f"export type {name} =", *(f"  | {m}" for m in union)]) + ";"

    # --- rendering ------------------------------------------------------------------------

    def _render(self, schema: Any, depth: int, where: str) -> tuple[str, int]:
        if depth > MAX_DEPTH:
            raise SchemaTranslationError(f"schema nested deeper than {MAX_DEPTH} levels at {where}")
        if schema is True or schema == {}:
            return "unknown", _PRIMARY
        if schema is False:
            return "never", _PRIMARY
        if not isinstance(schema, dict):
            raise SchemaTranslationError(f"expected a schema object at {where}, got {schema!r}")
        if "$ref" in schema:
            return self._ref(schema["$ref"], where), _PRIMARY
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                members = schema[combinator]
                return self._union(
                    [
                        self._render(m, depth + 1, f"{where}.{combinator}[{i}]")[0]
                        for i, m in enumerate(members)
                    ]
                )
        if "allOf" in schema:
            parts = [
                self._render(m, depth + 1, f"{where}.allOf[{i}]")
                for i, m in enumerate(schema["allOf"])
            ]
            return self._intersection(parts)
        if "const" in schema:
            return literal(schema["const"]), _PRIMARY
        if "enum" in schema:
            return self._union([literal(v) for v in schema["enum"]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._union(
                [self._render({**schema, "type": k}, depth + 1, where)[0] for k in kind]
            )
        if kind is None:
            return "unknown", _PRIMARY
        if kind in ("string", "boolean", "null"):
            return kind, _PRIMARY
        if kind in ("integer", "number"):
            return "number", _PRIMARY
        if kind == "array":
            return self._array(schema, depth, where), _PRIMARY
        if kind == "object":
            members = self._members(schema, depth, where, block=False)
            if not members:
                return "{}", _PRIMARY
            return "{ " + "; ".join(m[-1].removesuffix(";") for m in members) + " }", _PRIMARY
        raise SchemaTranslationError(f"unknown JSON Schema type {kind!r} at {where}")

    def _ref(self, ref: Any, where: str) -> str:
        if not isinstance(ref, str) or not ref.startswith(self.ref_prefix):
            raise SchemaTranslationError(f"$ref {ref!r} at {where} is not under {self.ref_prefix}")
        target = ref.removeprefix(self.ref_prefix)
        if target not in self.names:
            raise SchemaTranslationError(f"$ref {ref!r} at {where} names no component")
        return self.names[target]

    def _union(self, members: list[str]) -> tuple[str, int]:
        unique = list(dict.fromkeys(members))
        if "unknown" in unique:
            return "unknown", _PRIMARY  # unknown absorbs every other member
        if len(unique) > 1 and "never" in unique:
            unique.remove("never")
        if not unique:
            return "never", _PRIMARY
        if len(unique) == 1:
            return unique[0], _UNION if _is_union(unique[0]) else _PRIMARY
        return " | ".join(unique), _UNION

    def _intersection(self, parts: list[tuple[str, int]]) -> tuple[str, int]:
        texts = list(dict.fromkeys(f"({t})" if p == _UNION else t for t, p in parts))
        if not texts:
            return "unknown", _PRIMARY
        if len(texts) == 1:
            return parts[0]
        return " & ".join(texts), _INTERSECTION

    def _array(self, schema: dict[str, Any], depth: int, where: str) -> str:
        items = schema.get("items", True)
        prefix = schema.get("prefixItems")
        if prefix is None:
            text, precedence = self._render(items, depth + 1, f"{where}.items")
            return f"({text})[]" if precedence < _PRIMARY else f"{text}[]"
        elements = [
            self._render(item, depth + 1, f"{where}.prefixItems[{i}]")[0]
            for i, item in enumerate(prefix)
        ]
        # Elements past minItems may be missing: JSON Schema does not require prefix items.
        required = min(int(schema.get("minItems", 0)), len(elements))
        shown = [e if i < required else f"{e}?" for i, e in enumerate(elements)]
        if items is not False:
            rest, precedence = self._render(items, depth + 1, f"{where}.items")
            shown.append(f"...({rest})[]" if precedence < _PRIMARY else f"...{rest}[]")
        return "[" + ", ".join(shown) + "]"

    def _members(
        self, schema: dict[str, Any], depth: int, where: str, *, block: bool
    ) -> list[list[str]]:
        """Object members, each a list of lines: in a `block` (an interface body) a doc
        comment and an indented `name?: type;`, inline just the latter."""
        indent = "  " if block else ""
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        members: list[list[str]] = []
        member_types: list[str] = []
        for name, sub in properties.items():
            text = self._render(sub, depth + 1, f"{where}.properties[{name!r}]")[0]
            member_types.append(text)
            optional = "" if name in required else "?"
            docs = doc_comment(_property_notes(sub), indent) if block else []
            members.append([*docs, f"{indent}{property_name(name)}{optional}: {text};"])
        extra = schema.get("additionalProperties", None if properties else True)
        if extra is not None and extra is not False:
            value = self._render(extra, depth + 1, f"{where}.additionalProperties")[0]
            # An index signature must admit every named member's type too.
            index = self._union([value, *member_types])[0]
            members.append([f"{indent}[key: string]: {index};"])
        return members


def _is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "object"


def _is_union(text: str) -> bool:
    return len(_top_level_members(text)) > 1


def _top_level_members(text: str) -> list[str]:
    """`text` split at each `|` outside brackets and string literals."""
    members, start, level, quoted, escaped = [], 0, 0, False, False
    for index, char in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "([{<":
            level += 1
        elif char in ")]}>":
            level -= 1
        elif char == "|" and level == 0:
            members.append(text[start:index].strip())
            start = index + 1
    return [*members, text[start:].strip()]


def _property_notes(schema: Any) -> list[str]:
    """Doc lines for a property: its description and the constraints its type cannot show."""
    if not isinstance(schema, dict):
        return []
    notes = [schema["description"]] if isinstance(schema.get("description"), str) else []
    sources = [schema]
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        # `T | null`: the constraints are T's.
        sources += [b for b in branches if isinstance(b, dict) and b.get("type") != "null"][:1]
    for source in sources:
        for tag in _DOC_TAGS:
            if tag in source:
                value = source[tag]
                shown = value if isinstance(value, str) else json.dumps(value)
                notes.append(f"@{tag} {shown}")
    if "default" in schema:
        notes.append(f"@default {json.dumps(schema['default'])}")
    return notes
