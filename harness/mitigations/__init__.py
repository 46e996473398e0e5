"""The built-in mitigations and the spelling of a mitigation on the command line.

    spec  := part ("+" part)*
    part  := name (":" key "=" value)*

`rri`, `rri:a=0.999:b=0.5`, `window:r=1024`, `state-norm:k=1:mult=2`, `dt-scale:file=s.json`;
`rri+window:r=1024` applies rri, then the window (see compose.py for what combines). The
canonical spec of each part lists all its parameters, keys sorted (`dt-scale`/`a-scale` list
`file` only when given); a composite's is its parts' canonical specs joined by '+', in the
written order. Values may not contain ':' or '+'.

Calibrated data needed to reproduce a run (state-norm's thresholds, the per-layer scales used)
comes from `artifacts()` after `hooks(model)`.
"""

from __future__ import annotations

import difflib

from harness.mitigations.base import Mitigation, MitigationError
from harness.registry import MITIGATIONS, Registry, RegistryError

__all__ = ["Mitigation", "MitigationError", "parse_mitigation"]


def parse_mitigation(spec: str, known: Registry = MITIGATIONS) -> Mitigation:
    """A mitigation from its spec; `known` names the valid ones (default: the registry)."""
    from harness.mitigations.compose import compose

    return compose([_parse_part(part, spec, known) for part in spec.split("+")])


def _parse_part(part: str, spec: str, known: Registry) -> Mitigation:
    name, *fields = part.strip().split(":")
    if not name:
        raise MitigationError(
            f"{spec!r} has an empty mitigation name; write name[:key=value...][+name...]"
        )
    if name not in known:
        names = known.names()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise MitigationError(
            f"unknown mitigation {name!r}.{hint} Valid: {', '.join(sorted(names))}"
        )
    try:
        cls = known.get(name)
    except RegistryError as err:
        raise MitigationError(str(err)) from None
    return cls.parse(fields)
