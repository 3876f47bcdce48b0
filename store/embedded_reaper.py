"""`python -m store.embedded_reaper DIR`: stops DIR's embedded Redis once its last user is gone.

Started detached by the first user that finds no reaper for the folder (store.embedded); users
that are killed cannot stop the server themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from store.embedded import EmbeddedRedis


def main(argv: list[str]) -> int:
    """Watch the folder CA_DIR, with DIR/redis.reaper's locked descriptor if one is handed on."""
    if len(argv) not in (2, 3) or (len(argv) == 3 and not argv[2].isdigit()):
        print("usage: python -m store.embedded_reaper CA_DIR [LOCKED_FD]", file=sys.stderr)
        return 2
    EmbeddedRedis(Path(argv[1])).reap(int(argv[2]) if len(argv) == 3 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
