"""Structs of every shape the TypeScript generator must handle (tests/test_typescript*.py)."""

from __future__ import annotations

import enum
from typing import Any, Generic, Literal, TypeVar

import msgspec

T = TypeVar("T")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tree(msgspec.Struct):
    """A recursive type: a node and its children."""

    name: str
    children: list[Tree] = []


class Circle(msgspec.Struct, tag_field="kind", tag="circle"):
    radius: float


class Square(msgspec.Struct, tag_field="kind", tag="square"):
    side: float


class Box(msgspec.Struct, Generic[T]):
    item: T


class Record(msgspec.Struct):
    """Named like a TypeScript global type."""

    x: int


class EventFrame(msgspec.Struct):
    """A payload named like a protocol frame."""

    note: str


class Tricky(msgspec.Struct, kw_only=True):
    """Every shape at once. A */ in a docstring must not end the comment."""

    required_int: int
    optional_str: str = ""
    nullable: int | None
    maybe: str | None = None
    mode: Literal["fast", "slow"] = "fast"
    mixed: Literal[1, "one", None] = 1
    color: Color = Color.RED
    level: Level = Level.LOW
    shape: Circle | Square
    tree: Tree
    matrix: list[list[int]] = []
    pairs: list[int | str] = []
    point: tuple[int, str]
    rest: tuple[int, ...] = ()
    counts: dict[str, int] = {}
    nested: dict[str, list[Tree | None]] = {}
    blob: bytes = b""
    box: Box[int] | None = None
    record: Record | None = None
    frame: EventFrame | None = None
    dash: float = msgspec.field(default=0.5, name="content-type")
    digit: int = msgspec.field(default=0, name="2fa")
    dollar: int = msgspec.field(default=0, name="$ok")
    quote: int = msgspec.field(default=0, name="it's a-b")
    unicode: int = msgspec.field(default=0, name="größe")
    anything: Any = None


# A catalog of the tricky types, as `hub codegen ts` would get it from load_catalogs.
TRICKY_EVENTS: dict[str, type[msgspec.Struct]] = {
    "test.tricky.happened": Tricky,
    "test.tree.grown": Tree,
    "test.frame.noted": EventFrame,
}
