"""Which cached entries a change can affect: the one rule the cache service and the sandbox's
in-process tier both apply when documents are written."""

from __future__ import annotations


def scope_matches(scope: str, prefix: str) -> bool:
    """True when a change at `prefix` can affect an entry that read `scope` (relative, normalised).

    Either one lies beneath the other, or they are equal; the root ("." or "") is an ancestor of all.
    """
    if prefix in ("", ".") or scope in ("", "."):
        return True
    return scope == prefix or scope.startswith(prefix + "/") or prefix.startswith(scope + "/")
