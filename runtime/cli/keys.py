"""``busref keys generate --out DIR [--name NAME]``: a CURVE key pair for the publisher or a client.

The publisher needs its secret file (``publisher.curve.server_secret_key_file``) and a folder of
the allowed clients' public ``.key`` files (``publisher.curve.allowed_clients_dir``); each
client needs its own key pair and the server's public ``.key`` file.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import zmq.auth

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "example (server + one client):\n"
        "  busref keys generate --out keys --name server\n"
        "  busref keys generate --out keys/clients --name detector1\n"
        "  # rig file: publisher.curve {enabled: true, server_secret_key_file: keys/server.key_secret,\n"
        "  #                            allowed_clients_dir: keys/clients}"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = actions.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret)")
    gen.add_argument("--out", type=Path, required=True, help="folder to write the key files into")
    gen.add_argument("--name", default="server", help="base name of the key files (default: server)")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")


def generate_keys(out: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write a CURVE key pair; returns (public_file, secret_file). Refuses to overwrite unless ``force``."""
    if not name or Path(name).name != name:
        raise ValueError(f"--name must be a plain file name, got {name!r}")
    existing = [p for p in (out / f"{name}.key", out / f"{name}.key_secret") if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to replace the key pair")
    out.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(out, name)
    os.chmod(secret, 0o600)  # the secret key authenticates the server: owner-only
    return Path(public), Path(secret)


def run(args: argparse.Namespace) -> int:
    try:
        public, secret = generate_keys(args.out, args.name, args.force)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    print(f"public key: {public}")
    print(f"secret key: {secret}  (keep private)")
    return 0
