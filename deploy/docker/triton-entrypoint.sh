#!/usr/bin/env bash
# The engine models run in the venv's Python through the 3.11 Python-backend stub that
# build-gpu-repo copies from nvidia-pytriton; the stub finds that Python through PATH and
# libpython plus the wheel's bundled libraries through LD_LIBRARY_PATH (as
# t2i_router.triton.server.triton_environment() sets them for the managed server).
set -euo pipefail
export PATH=/opt/t2i/bin:$PATH
libdir=$(python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
bundled=$(python -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs")')
export LD_LIBRARY_PATH=$libdir:$bundled:${LD_LIBRARY_PATH:-}
exec "$@"
