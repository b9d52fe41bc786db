"""CoReS: cross-entropy against the fixed d-Simplex classifier; no old model in the loop.

Every version is trained from scratch against the same simplex (same label -> vertex map), so the
feature space stays stationary across versions (docs/methods.md, "d-Simplex fixed classifier"). The loss is the baseline's
plain cross-entropy: only the head differs.
"""

from __future__ import annotations

from compat.methods.independent import Independent

__all__ = ["CoReS"]


class CoReS(Independent):
    head = "simplex"
    needs_old_model = False
