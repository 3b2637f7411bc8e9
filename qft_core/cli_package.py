"""The `qft package …` and `qft serve` commands: argument parsing only, the work happens in `qft_core.package`."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import typing
from collections.abc import Callable
from pathlib import Path

from qft_core.config import GgufType, load_config

# Read when --api-key is not given: a key on the command line is visible to every user of the machine.
API_KEY_ENV = "QFT_API_KEY"


Handler = Callable[[argparse.Namespace], int]


def _package_errors_as_command_errors(run: Handler) -> Handler:
    """Report a package problem as the one-line `qft` error (exit status 1)."""

    @functools.wraps(run)
    def handler(args: argparse.Namespace) -> int:
        from qft_core.cli import CommandError
        from qft_core.package.layout import PackageError

        try:
            return run(args)
        except PackageError as error:
            raise CommandError(str(error)) from None

    return handler


@_package_errors_as_command_errors
def cmd_package_verify(args: argparse.Namespace) -> int:
    from qft_core.package.bundle import verify_package

    config = load_config(args.config, device=args.device)
    print(verify_package(Path(args.path), device=config.model.device, limits=config.export).summary())
    return 0


@_package_errors_as_command_errors
def cmd_package_unpack(args: argparse.Namespace) -> int:
    from qft_core.package.bundle import unpack_package

    print(unpack_package(Path(args.archive), Path(args.out), load_config(args.config).export))
    return 0


@_package_errors_as_command_errors
def cmd_package_vllm_command(args: argparse.Namespace) -> int:
    from qft_core.serve.vllm import vllm_command

    export = load_config(args.config, device=args.device).export
    command = vllm_command(
        Path(args.path),
        max_model_len=export.vllm_max_model_len,
        host=export.host,
        port=export.port,
        tensor_parallel_size=export.vllm_tensor_parallel_size,
        gpu_memory_utilization=export.vllm_gpu_memory_utilization,
    )
    print(shlex.join(command))
    return 0


@_package_errors_as_command_errors
def cmd_package_sglang_command(args: argparse.Namespace) -> int:
    from qft_core.serve.vllm import sglang_command

    export = load_config(args.config).export
    command = sglang_command(
        Path(args.path),
        context_length=export.vllm_max_model_len,
        host=export.host,
        port=export.port,
        tensor_parallel_size=export.vllm_tensor_parallel_size,
        mem_fraction_static=export.vllm_gpu_memory_utilization,
    )
    print(shlex.join(command))
    return 0


@_package_errors_as_command_errors
def cmd_package_gguf(args: argparse.Namespace) -> int:
    from qft_core.cli import CommandError
    from qft_core.package.gguf_verify import write_gguf_folder

    export = load_config(args.config).export
    written = write_gguf_folder(
        Path(args.model_dir),
        Path(args.out),
        args.type or export.gguf_types,
        model_name=args.name or export.package_name,
        verify=not args.no_verify,
    )
    failed = []
    for gguf_file, check in written:
        verdict = "not verified" if check is None else ("verified" if check.passed else "FAILED verification")
        print(f"{gguf_file.path}  {gguf_file.size_bytes / 1e6:.1f} MB  {verdict}")
        if check is not None:
            print(
                f"  max |logit diff| {check.max_abs_logit_diff:.4g} (tolerance {check.tolerance:.1%} of "
                f"{check.max_abs_reference_logit:.4g}), greedy {check.greedy_agreeing}/{check.greedy_steps} agree"
            )
            failed += [] if check.passed else [gguf_file.path.name]
    if failed:
        raise CommandError(f"{', '.join(failed)}: read back by transformers, differs from {args.model_dir}")
    return 0


@_package_errors_as_command_errors
def cmd_serve(args: argparse.Namespace) -> int:
    from qft_core.cli import CommandError

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


def add_package_commands(commands: argparse._SubParsersAction) -> None:
    """Add `qft package verify|unpack|vllm-command|sglang-command|gguf` and `qft serve` to the `qft` parser's
    subcommands."""
    package = commands.add_parser(
        "package", help="check, unpack or print the vLLM or SGLang command for a deployment package; export GGUF"
    )
    actions = package.add_subparsers(dest="package_command", required=True, metavar="ACTION")

    verify = actions.add_parser("verify", help="check the manifest, reload the model and generate a few tokens")
    verify.add_argument("path", metavar="PATH", help="package folder or .tar.gz archive")
    verify.set_defaults(handler=cmd_package_verify)

    unpack = actions.add_parser("unpack", help="safely extract a package archive (no links, nothing outside --out)")
    unpack.add_argument("archive", metavar="TAR", help="package .tar.gz archive")
    unpack.add_argument("--out", required=True, metavar="DIR", help="folder to extract into")
    unpack.set_defaults(handler=cmd_package_unpack)

    vllm = actions.add_parser("vllm-command", help="print the `vllm serve` command line for a package folder")
    vllm.add_argument("path", metavar="PATH", help="package folder")
    vllm.set_defaults(handler=cmd_package_vllm_command)

    sglang = actions.add_parser("sglang-command", help="print the SGLang server command line for a package folder")
    sglang.add_argument("path", metavar="PATH", help="package folder")
    sglang.set_defaults(handler=cmd_package_sglang_command)

    gguf = actions.add_parser(
        "gguf", help="write a merged model as GGUF files with Ollama Modelfiles, each checked by transformers' reader"
    )
    gguf.add_argument("model_dir", metavar="MODEL_DIR", help="a Qwen3 model folder (the merged model)")
    gguf.add_argument("--out", required=True, metavar="DIR", help="folder for the .gguf files and Modelfiles")
    gguf.add_argument(
        "--type", action="append", choices=typing.get_args(GgufType), help="GGUF type; repeat for several "
        "(default: export.gguf_types)"
    )
    gguf.add_argument("--name", help="model name in the files and their names (default: export.package_name)")
    gguf.add_argument("--no-verify", action="store_true", help="skip reading each file back and comparing logits")
    gguf.set_defaults(handler=cmd_package_gguf)

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
