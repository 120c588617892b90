"""Issue 19.4: third-party warnings and native stderr go to the run folder's log, ours stay on the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import logging, os, sys, warnings
    from pathlib import Path
    from hwcompress.runlog import library_output_to

    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr)], format="%(name)s: %(message)s")
    with library_output_to(Path(sys.argv[1])):
        warnings.warn("torchao says something", UserWarning)
        logging.getLogger("absl").warning("absl chatter")
        os.write(2, b"native C++ banner\\n")
        logging.getLogger("hwcompress.search").warning("our own message")
        print("python stderr line", file=sys.stderr)
    os.write(2, b"after the block\\n")
""")


def test_library_output_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run" / "libraries.log"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for noise in ("torchao says something", "absl chatter", "native C++ banner"):
        assert noise not in res.stderr
        assert noise in log.read_text()
    assert "hwcompress.search: our own message" in res.stderr
    assert "python stderr line" in res.stderr
    assert "after the block" in res.stderr  # fd 2 is restored
    assert "our own message" in log.read_text()  # the file is the whole log; the terminal only ours
