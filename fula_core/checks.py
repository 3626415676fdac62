"""The closing "Checks" cell of every notebook: each paper claim is reported as HOLDS or NOT REPRODUCED
with the numbers behind it, never hidden. At the smoke profile the numbers mean nothing, so only the
structure (every expected row and figure exists) is asserted there.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Checks:
    profile: str
    results: list[dict] = field(default_factory=list)

    def structure(self, what: str, ok: bool) -> None:
        """Something that must be true at every profile (a row, a figure, a column): asserted."""
        self.results.append({"check": what, "kind": "structure", "holds": bool(ok), "detail": ""})
        print(f"[{'ok' if ok else 'MISSING'}] {what}")
        assert ok, f"structure check failed: {what}"

    def claim(self, what: str, holds: bool, detail: str = "") -> None:
        """A qualitative claim of the paper: reported honestly at quick/paper, skipped at smoke."""
        if self.profile == "smoke":
            self.results.append({"check": what, "kind": "claim", "holds": None, "detail": "not evaluated at smoke"})
            print(f"[skipped at smoke] {what}")
            return
        self.results.append({"check": what, "kind": "claim", "holds": bool(holds), "detail": detail})
        print(f"[{'HOLDS' if holds else 'NOT REPRODUCED'}] {what}" + (f"\n    {detail}" if detail else ""))

    def summary(self):
        import pandas as pd

        df = pd.DataFrame(self.results)
        claims = df[df.kind == "claim"] if len(df) else df
        if self.profile != "smoke" and len(claims):
            print(f"\n{int(claims.holds.sum())} of {len(claims)} claims hold at profile {self.profile!r}")
        return df
