"""The `qft package …` commands: check and unpack a deployment package, print the vLLM or SGLang command that
serves it, export a merged model as GGUF. Argument parsing only; the work is in `qft_core.package`."""

from __future__ import annotations

import argparse
import shlex
import typing
from pathlib import Path

from qft_core.cli.errors import CommandError, reported
from qft_core.config import GgufType, load_config
from qft_core.package.layout import PackageError


@reported(PackageError)
def cmd_package_verify(args: argparse.Namespace) -> int:
    from qft_core.package.bundle import verify_package

    config = load_config(args.config, device=args.device)
    print(verify_package(Path(args.path), device=config.model.device, limits=config.export).summary())
    return 0


@reported(PackageError)
def cmd_package_unpack(args: argparse.Namespace) -> int:
    from qft_core.package.bundle import unpack_package

    print(unpack_package(Path(args.archive), Path(args.out), load_config(args.config).export))
    return 0


@reported(PackageError)
def cmd_package_gpu_command(args: argparse.Namespace) -> int:
    """The command line of `args.engine` (vllm or sglang) with the export config's context, address and GPU share."""
    from qft_core.serve.vllm import sglang_command, vllm_command

    export = load_config(args.config, device=args.device).export
    common = {"host": export.host, "port": export.port, "tensor_parallel_size": export.vllm_tensor_parallel_size}
    if args.engine == "vllm":
        command = vllm_command(
            Path(args.path), max_model_len=export.vllm_max_model_len,
            gpu_memory_utilization=export.vllm_gpu_memory_utilization, **common,
        )
    else:
        command = sglang_command(
            Path(args.path), context_length=export.vllm_max_model_len,
            mem_fraction_static=export.vllm_gpu_memory_utilization, **common,
        )
    print(shlex.join(command))
    return 0


@reported(PackageError)
def cmd_package_gguf(args: argparse.Namespace) -> int:
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


def add_package_commands(commands: argparse._SubParsersAction) -> None:
    """Add `qft package verify|unpack|vllm-command|sglang-command|gguf` to the `qft` parser's subcommands."""
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

    for engine, summary in (("vllm", "the `vllm serve` command line"), ("sglang", "the SGLang server command line")):
        gpu_command = actions.add_parser(f"{engine}-command", help=f"print {summary} for a package folder")
        gpu_command.add_argument("path", metavar="PATH", help="package folder")
        gpu_command.set_defaults(handler=cmd_package_gpu_command, engine=engine)

    gguf = actions.add_parser(
        "gguf", help="write a merged model as GGUF files with Ollama Modelfiles, each checked by transformers' reader"
    )
    gguf.add_argument("model_dir", metavar="MODEL_DIR", help="a Qwen3 model folder (the merged model)")
    gguf.add_argument("--out", required=True, metavar="DIR", help="folder for the .gguf files and Modelfiles")
    gguf.add_argument(
        "--type", action="append", choices=typing.get_args(GgufType),
        help="GGUF type; repeat for several (default: export.gguf_types)",
    )
    gguf.add_argument("--name", help="model name in the files and their names (default: export.package_name)")
    gguf.add_argument("--no-verify", action="store_true", help="skip reading each file back and comparing logits")
    gguf.set_defaults(handler=cmd_package_gguf)
