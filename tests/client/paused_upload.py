"""Starts an upload through :func:`app.client.uploads.upload` in 256 KiB chunks and stops in the middle of the file
(once the server has ``PAUSE`` bytes), printing ``PAUSED``: the test kills this process there, as a user's Ctrl-C
or a crash would.

    python tests/client/paused_upload.py FILE NAME PAUSE   (server and key from APPRAISE_URL, APPRAISE_API_KEY)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from app.client import AppraiseClient, resumable
from app.client.uploads import upload


def main() -> None:
    resumable.CHUNK_BYTES = 256 * 1024
    path, name, pause = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def progress(done: int, total: int) -> None:
        if done >= pause:
            print("PAUSED", done, total, flush=True)
            time.sleep(3600)

    with AppraiseClient() as api:
        upload(api, path, name=name, progress=progress)


if __name__ == "__main__":
    main()
