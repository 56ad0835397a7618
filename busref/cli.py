"""The ``busref`` command: a table of subcommands, each imported only when it is used.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Loading lazily keeps ``busref run`` and ``busref watch`` free of torch: only ``train``,
``eval``, ``register``, ``fuse`` and ``export onnx`` need the ``train`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from busref import __version__
from busref.runtime import exit_codes, shutdown  # standard library only: no torch, no numpy


@dataclass(frozen=True)
class Subcommand:
    module: str
    help: str
    extra: str  # the pip extra that provides its dependencies
    daemon: bool = False  # stops on SIGINT/SIGTERM: the handlers go in before its (slow) imports


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("busref.models.cli.train", "train one stage: bus, fusion, registration or descriptor",
                        "train"),
    "eval": Subcommand("busref.models.cli.evaluate", "evaluate registration or fusion on a data folder", "train"),
    "register": Subcommand("busref.models.cli.register", "register (and fuse) IR images onto visible ones", "train"),
    "fuse": Subcommand("busref.models.cli.fuse", "fuse already aligned IR/visible pairs", "train"),
    "export": Subcommand("busref.export.cli", "export a checkpoint to ONNX or an ONNX graph to a TensorRT engine",
                         "train"),
    "run": Subcommand("busref.runtime.cli.run", "run the rig daemon: capture, register, fuse, publish", "runtime",
                      daemon=True),
    "bench": Subcommand("busref.runtime.cli.bench", "measure the daemon's per-stage latency and throughput",
                        "runtime"),
    "watch": Subcommand("busref.runtime.cli.watch", "subscribe to a fused stream: fps, latency, save frames",
                        "runtime"),
    "calibrate": Subcommand("busref.runtime.cli.calibrate", "estimate a rig's IR->RGB prior from live pairs",
                            "runtime"),
    "config": Subcommand("busref.runtime.cli.config", "check a rig file or print its JSON Schema", "runtime"),
    "keys": Subcommand("busref.runtime.cli.keys", "generate CURVE key pairs for the publisher and clients", "runtime"),
    "doctor": Subcommand("busref.export.doctor", "report the environment; GPU/TensorRT parity and timing checks",
                         "runtime"),
}

EPILOG = """\
training, in order (each stage starts from the previous one's checkpoint with --init):
  busref train bus           the reconstructor (auto-encoder) shared by all networks
  busref train fusion        the GAF fusion network, bus frozen
  busref train registration  the Affine and Deformable nets, bus and GAF frozen
  busref train descriptor    the cross-modal descriptor of the per-pair refinement (on its own)

extras: 'train' (torch) for train, eval, register, fuse and export onnx; 'runtime' for the
others; 'client' (pyzmq + numpy) for the busref.client subscriber alone.

Run 'busref COMMAND --help' for the options of one command."""
def _load(name: str):
    sub = SUBCOMMANDS[name]
    try:
        return importlib.import_module(sub.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        print(f"busref {name}: needs the Python package '{missing}', which is not installed. "
              f"Install it with: pip install 'busref[{sub.extra}]'.", file=sys.stderr)
        raise SystemExit(exit_codes.MISSING_DEPENDENCY) from None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busref",
        description="BusReF: register thermal-IR onto RGB, fuse them, and publish the fused stream.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"busref {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the subcommand actually named on the command line is imported.
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    if chosen is not None and SUBCOMMANDS[chosen].daemon:
        shutdown.install()
    for name, sub in SUBCOMMANDS.items():
        sp = subparsers.add_parser(name, help=sub.help, description=sub.help)
        if name == chosen:
            _load(name).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
