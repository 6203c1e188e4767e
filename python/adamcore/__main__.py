"""Command line: ``python -m adamcore COMMAND``.

Each command lives in its own module, which defines ``add_parser(subparsers)``; the
parser it adds sets ``func`` to a callable taking the parsed arguments and returning
an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

# Modules that each add one subcommand; any not present in this build is skipped.
_COMMAND_MODULES = ("adamcore.bench", "adamcore.reddi", "adamcore.phase", "adamcore.golden",
                    "adamcore.explain", "adamcore.epsilon")


def _info(args: argparse.Namespace) -> int:
    import adamcore
    from adamcore import _ranks

    info = {}
    for key, value in adamcore.runtime_info().items():
        info[key] = value
        if key == "threads":  # and where that count came from
            info["threads_source"] = _ranks.thread_source(adamcore.get_num_threads)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adamcore",
                                     description="adamcore: exact CPU optimizer kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print what was compiled, detected and is in use")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
