"""The participant kinds, one module each, by name (harness.engine.participants says what a kind
is). A new kind is one module here with its KIND, and its entry below."""
from __future__ import annotations

from ..participants import Kind
from . import backend, baseline, probe

KINDS: dict[str, Kind] = {k.KIND.name: k.KIND for k in (backend, probe, baseline)}
