"""The `qft serve` command: a deployment package behind the OpenAI-compatible HTTP API. Argument parsing only;
the work is in `qft_core.serve.server`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from qft_core.cli.errors import CommandError, reported
from qft_core.config import load_config
from qft_core.package.layout import PackageError

# Read when --api-key is not given: a key on the command line is visible to every user of the machine.
API_KEY_ENV = "QFT_API_KEY"


@reported(PackageError)
def cmd_serve(args: argparse.Namespace) -> int:
    # The server runs torch from one generation thread. With libgomp's default active waiting, its idle OpenMP
    # helper spins and takes the core from that thread whenever other processes compete (3-4x fewer tokens/s on a
    # shared 2-core machine); passive waiting costs nothing measurable on an idle one. Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from qft_core.package.bundle import unpack_cached
    from qft_core.serve.server import ServerSettings, serve_package

    config = load_config(args.config, device=args.device)
    export = config.export
    package = Path(args.package)
    if package.is_file():
        package = unpack_cached(package, config.paths.resolve(config.paths.package_cache_dir), export)
        print(f"serving {package} (unpacked from {args.package})")
    elif not package.is_dir():
        raise CommandError(f"{package}: no such package folder or .tar.gz archive")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or export.api_key
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve_package(
        package,
        ServerSettings.from_export_config(export, api_key=api_key),
        host=args.host or export.host,
        port=args.port or export.port,
        device=config.model.device,
    )
    return 0


def add_serve_commands(commands: argparse._SubParsersAction) -> None:
    """Add `qft serve` to the `qft` parser's subcommands."""
    serve = commands.add_parser("serve", help="serve a package over an OpenAI-compatible HTTP API")
    serve.add_argument(
        "package", metavar="PACKAGE", help="package folder, or its .tar.gz (unpacked once to paths.package_cache_dir)"
    )
    serve.add_argument("--host", help="address to listen on (default: export.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: export.port, 8000)")
    serve.add_argument(
        "--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, then export.api_key)"
    )
    serve.set_defaults(handler=cmd_serve)
