"""Regenerates the Python stubs of ``proto/t2i_router/v1/router.proto`` into this package.

One command, used by ``make proto`` and by the test that diffs the committed stubs:

    python -m t2i_router_client.codegen            # rewrites the committed stubs
    python -m t2i_router_client.codegen --out DIR  # writes them into DIR instead

protoc (from grpcio-tools, pinned in pyproject.toml so that the output is reproducible) runs with
``-I proto`` so that the file keeps its full name ``t2i_router/v1/router.proto`` in the descriptor
pool (reflection and imports by other protos rely on it). Its output lands under
``t2i_router/v1/``; the three files are moved flat into the package and the grpc module's absolute
``from t2i_router.v1 import router_pb2`` is rewritten to a package-relative import, so the stubs
neither collide with the service package ``t2i_router`` nor need a path hack.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED_FILES", "PROTO_FILE", "generate"]

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[2]
PROTO_FILE = "t2i_router/v1/router.proto"
GENERATED_FILES = ("router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py")

_ABSOLUTE_IMPORT = re.compile(r"^from t2i_router\.v1 import (\w+_pb2) as", re.MULTILINE)


def generate(out_dir: Path = PACKAGE_DIR, proto_root: Path = REPO_ROOT / "proto") -> list[Path]:
    """Runs protoc on the router proto and writes the fixed-up stubs into ``out_dir``.

    Args:
        out_dir: Where ``router_pb2.py``, ``router_pb2.pyi`` and ``router_pb2_grpc.py`` go.
        proto_root: The include root holding ``t2i_router/v1/router.proto``.

    Returns:
        The paths written, in the order of `GENERATED_FILES`.

    Raises:
        RuntimeError: protoc failed (its messages are on stderr).
    """
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto_root / PROTO_FILE),
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc exited with {code} on {proto_root / PROTO_FILE}")
        produced = Path(tmp) / Path(PROTO_FILE).parent
        written = []
        for name in GENERATED_FILES:
            target = out_dir / name
            text = (produced / name).read_text()
            if name.endswith("_grpc.py"):
                text, n = _ABSOLUTE_IMPORT.subn(r"from . import \1 as", text)
                if n != 1:
                    raise RuntimeError(f"expected one pb2 import in {name}, found {n}")
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="output directory")
    parser.add_argument(
        "--proto-root", type=Path, default=REPO_ROOT / "proto", help="include root of the proto"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out, args.proto_root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
