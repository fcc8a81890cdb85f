"""Which names can be case ids, how a file name is shown, and which seeds a cohort takes.

A case id is text that a case list (one id per line, ``#`` starts a comment) and a shell can
carry: UTF-8, no control characters, no leading or trailing space. An image whose name breaks
these rules is not a case (``Cohort.unusable_names`` says why).
"""

from __future__ import annotations

import os
from typing import Optional

from .database import CohortError, PathLike

#: Seeds go to numpy and torch alike: numpy takes 0 .. 2**32 - 1.
SEED_RANGE = (0, 2 ** 32 - 1)


def shown_name(path: PathLike) -> str:
    """A file name as one printable line, whatever bytes it holds (foreign bytes as \\xNN)."""
    text = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def case_id_problem(case_id: str) -> Optional[str]:
    """Why a list file (one id per line) or a shell could not carry this case id; None when it can."""
    try:
        case_id.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8 text"
    bad = [c for c in case_id if ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029"]
    if bad:
        return f"its name holds a control character ({bad[0]!r})"
    if "#" in case_id:
        return "its name holds '#', which starts a comment in a case list"
    if case_id != case_id.strip():
        return "its name starts or ends with a space"
    return None


def check_seed(seed: int) -> int:
    if not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
        raise CohortError(f"seed {seed} is out of range: a seed is {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    return int(seed)
