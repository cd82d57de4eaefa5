"""`make`'s install stamps follow what pyproject.toml and requirements.lock say, not file times."""

import os
import re
import shutil
import subprocess

from tests.conftest import REPO


def planned(folder) -> list[str]:
    """The commands `make install` would run there (make -n runs none of them)."""
    proc = subprocess.run(["make", "-n", "-s", "install"], cwd=folder, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return [line for line in proc.stdout.splitlines() if line.strip()]


def test_a_fresh_clone_keeps_its_venv_and_an_edit_rebuilds_it(tmp_path):
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    (stamp,) = (re.fullmatch(r"touch (\S+)", line)[1] for line in planned(tmp_path)
                if line.startswith("touch "))  # fmt: skip
    (tmp_path / stamp).parent.mkdir()
    (tmp_path / stamp).touch()  # as if installed
    assert planned(tmp_path) == []
    # Newer files, the same content (a fresh clone, a checkout): nothing to do.
    later = (tmp_path / stamp).stat().st_mtime + 60
    for name in ("pyproject.toml", "requirements.lock"):
        os.utime(tmp_path / name, (later, later))
    assert planned(tmp_path) == []
    # Another content: install again.
    with open(tmp_path / "pyproject.toml", "a") as file:
        file.write("\n# an edit\n")
    assert any("pip install" in line for line in planned(tmp_path))
