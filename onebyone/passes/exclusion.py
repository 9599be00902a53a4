"""Convs the user keeps out of the rewrite by name (`--exclude`, `optimize(exclude=...)`): a detection head, the
first and last layers, whatever a task is known to be sensitive to."""

from __future__ import annotations

import fnmatch

from onebyone.errors import OneByOneError


def exclude(infos: list, patterns: tuple[str, ...]) -> None:
    """Mark every conv (passes.analysis.ConvInfo) whose name matches one of the glob `patterns` (fnmatch:
    `*`, `?`, `[...]`; names as reports list them) skipped, with the pattern in the reason, before any policy or
    budget sees it: excluded convs are not targeted, so a budget's fraction is of the others. A pattern that matches
    no conv raises OneByOneError naming it (a typo would otherwise exclude nothing, silently)."""
    for pattern in patterns:
        matched = [i for i in infos if fnmatch.fnmatchcase(i.name, pattern)]
        if not matched:
            raise OneByOneError(f"exclude pattern {pattern!r} (--exclude) matches no conv (the names `onebyone "
                                "inspect` lists; glob patterns such as 'head/*')")
        for info in matched:
            if info.skip_reason is None:
                info.skip_reason = f"excluded by pattern {pattern!r} (--exclude)"
