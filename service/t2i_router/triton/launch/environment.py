"""The tritonserver of the ``nvidia-pytriton`` wheel, made runnable, and the environment it needs.

The binary is the Triton 2.51 build shipped in the wheel. It cannot run from site-packages as
installed: the Python backend needs the stub for this interpreter copied into
``backends/python/``, the stub finds its interpreter through ``python3`` on PATH, and anything the
stub imports that links OpenSSL needs the interpreter's LIBDIR ahead of the wheel's bundled
libraries. `prepare_tritonserver` builds that layout once per wheel version in a cache directory
and `triton_environment` builds the matching environment.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path

from t2i_router.errors import TritonStartError
from t2i_router.triton.launch.config import default_cache_dir

__all__ = ["prepare_tritonserver", "triton_environment"]

log = logging.getLogger(__name__)


def prepare_tritonserver(cache_dir: Path | None = None) -> Path:
    """Returns a runnable tritonserver folder, copying it out of the pytriton wheel once.

    The copy is keyed by the wheel version and interpreter version, built in a temporary folder
    and renamed into place, so concurrent callers never see a half-copied tree.

    Args:
        cache_dir: Parent folder of the copy; None means `default_cache_dir`.

    Returns:
        The folder holding ``bin/tritonserver``, ``backends/`` and ``caches/``.

    Raises:
        TritonStartError: The wheel lacks the server or the stub for this Python, or the copy
            failed.
    """
    from importlib import metadata

    import pytriton

    source = Path(pytriton.__file__).parent / "tritonserver"
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / py_version / "triton_python_backend_stub"
    if not (source / "bin" / "tritonserver").is_file() or not stub.is_file():
        raise TritonStartError(f"{source} holds no tritonserver or no Python {py_version} stub")
    version = metadata.version("nvidia-pytriton")
    target = (cache_dir or default_cache_dir()) / f"tritonserver-{version}-py{py_version}"
    if (target / "backends" / "python" / "triton_python_backend_stub").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        tree = staging / "tritonserver"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        try:
            tree.rename(target)
        except OSError as e:
            # Another process finished its copy first; theirs is as good as ours.
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise TritonStartError(f"cannot prepare tritonserver under {target.parent}: {e}") from e
    log.info("prepared tritonserver %s in %s", version, target)
    return target


def triton_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Returns the environment tritonserver and its Python backend stubs need.

    Args:
        base: Environment to extend; None means ``os.environ``.

    Returns:
        A copy of ``base`` with this interpreter's ``bin`` first on PATH (the stub runs the
        ``python3`` it finds there, so models see this venv) and the interpreter's LIBDIR, then
        the wheel's bundled libraries, first on LD_LIBRARY_PATH.
    """
    import pytriton

    env = dict(os.environ if base is None else base)
    venv_bin = Path(sys.prefix) / "bin"
    env["PATH"] = os.pathsep.join(p for p in (str(venv_bin), env.get("PATH", "")) if p)
    wheel_libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env
