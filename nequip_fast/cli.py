"""``nequip-fast``: one entry point; each subcommand lives in the module that does the work.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> int`` as the parser default.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import nequip_fast
from nequip_fast.allocator import keep_freed_memory

# module paths, imported lazily so that `nequip-fast info` never pays for heavy imports
COMMANDS = ["nequip_fast.commands.info", "nequip_fast.commands.train", "nequip_fast.commands.evaluate",
            "nequip_fast.commands.benchmark", "nequip_fast.commands.deploy", "nequip_fast.commands.import_",
            "nequip_fast.commands.lammps_plugin"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nequip-fast", description="NequIP potentials with fused kernels.")
    parser.add_argument("--version", action="version", version=f"nequip_fast {nequip_fast.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
