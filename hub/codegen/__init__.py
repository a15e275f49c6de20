"""Client code generated from the hub's own types: TypeScript declarations (`hub codegen ts`).

`typescript` turns msgspec JSON Schemas into TypeScript; `declarations` assembles the
protocol frames and a catalog's event payloads into one .d.ts file.
"""

from __future__ import annotations

__all__: list[str] = []
