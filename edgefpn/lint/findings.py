"""The lint's result type, shared by the rules that produce findings and every caller that reads them
(the build stage records them in manifests, ``edgefpn trt-lint`` prints them, the TensorRT builder
refuses a source with errors). Separate so that the rules and the public entry point can both import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class Finding:
    """One lint result. ``node`` is the node name (or the tensor name for graph-level findings)."""

    severity: Literal["error", "warning"]
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity}: {where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
