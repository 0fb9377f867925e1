"""dexsim: the DEX lattice core, trace replay, cost model and simulator. Torch-free."""
import hashlib
import os
import sys
from pathlib import Path


def numba_cache_dir(root: Path = Path(__file__).resolve().parent) -> str:
    """One numba cache folder per version of the compiled sources. Numba keys a cached function on
    its own file only, so after a change to the core the modules that call into it would load
    machine code built against the old one, and run it, silently wrong."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        text = path.read_bytes()
        if b"@njit" in text:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + text)
    name = f"numba-{h.hexdigest()[:16]}"
    base = os.environ.get("NUMBA_CACHE_DIR") or str(root / "__pycache__")
    return base if os.path.basename(base) == name else os.path.join(base, name)  # a child process: as is


if "numba" in sys.modules:
    sys.modules["numba"].config.CACHE_DIR = numba_cache_dir()
else:  # read by numba when it is imported (by this package's modules, and by processes they start)
    os.environ["NUMBA_CACHE_DIR"] = numba_cache_dir()
