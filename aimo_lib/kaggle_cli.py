"""aimo-kaggle: build the offline wheelhouse, push datasets and the kernel, check on it.

    aimo-kaggle wheelhouse --out build/wheels --dataset you/aimo-lib-wheels
    aimo-kaggle push-dataset build/wheels [--new]
    aimo-kaggle kernel-metadata --competition aimo3 --user you --model-source o/m/f/v/1
    aimo-kaggle push-kernel [--dir .]
    aimo-kaggle status you/aimo-sc-tir
    aimo-kaggle output you/aimo-sc-tir --out runs/kaggle

It wraps the official `kaggle` CLI (pip install "aimo_lib[kaggle]", then `kaggle auth login`
or KAGGLE_API_TOKEN); it does not reimplement Kaggle's API. --dry-run prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """aimo_lib's wheel + the pinned runtime's wheels + dataset-metadata.json in one folder."""
    os.makedirs(args.out, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", args.out, args.source],
         args.dry_run)
    requirements = os.path.join(args.source, "requirements.txt")
    if not args.dry_run:
        shutil.copy(requirements, os.path.join(args.out, "requirements.txt"))
    if args.download:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "-r", requirements, "-d", args.out,
               "--only-binary=:all:", "--python-version", args.python_version,
               "--implementation", "cp"]
        for platform in args.platform:
            cmd += ["--platform", platform]
        _run(cmd, args.dry_run)
    metadata = {"title": args.title, "id": args.dataset, "licenses": [{"name": "apache-2.0"}]}
    if not args.dry_run:
        with open(os.path.join(args.out, "dataset-metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
    print(f"wheelhouse ready in {args.out}; next: aimo-kaggle push-dataset {args.out} --new")


def push_dataset(args) -> None:
    if args.new:
        _run(["kaggle", "datasets", "create", "-p", args.dir, "-r", "zip"], args.dry_run)
    else:
        _run(["kaggle", "datasets", "version", "-p", args.dir, "-m", args.message, "-r", "zip"],
             args.dry_run)


def kernel_metadata(args) -> None:
    """A folder to push for another competition: the notebook, and the repository's
    kernel-metadata.json with that competition's data source, machine and the model given."""
    from .competitions import get_competition

    competition = get_competition(args.competition)
    with open(os.path.join(REPO, "kernel-metadata.json")) as f:
        meta = json.load(f)
    meta["competition_sources"] = [competition.kaggle_dir]
    if competition.machine_shape:
        meta["machine_shape"] = competition.machine_shape
    if args.model_source:
        meta["model_sources"] = list(args.model_source)
    if args.user:
        meta = json.loads(json.dumps(meta).replace("your-kaggle-username", args.user))
    os.makedirs(args.out, exist_ok=True)
    shutil.copy(os.path.join(REPO, meta["code_file"]), args.out)
    meta["code_file"] = os.path.basename(meta["code_file"])
    with open(os.path.join(args.out, "kernel-metadata.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"{args.out}: {competition.name} on {competition.hardware} (machine_shape "
          f"{meta['machine_shape']}); next: aimo-kaggle push-kernel --dir {args.out}")


def push_kernel(args) -> None:
    path = os.path.join(args.dir, "kernel-metadata.json")
    with open(path) as f:
        meta = json.load(f)
    if "your-kaggle-username" in json.dumps(meta):
        sys.exit(f"edit {path} first: replace your-kaggle-username with your Kaggle username")
    cmd = ["kaggle", "kernels", "push", "-p", args.dir]
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
    add = lambda name, help: sub.add_parser(name, help=help, parents=[common])

    p = add("wheelhouse", "build the offline wheels dataset folder")
    p.add_argument("--out", default="build/wheels")
    p.add_argument("--dataset", required=True, help="owner/slug of the Kaggle dataset")
    p.add_argument("--title", default="aimo-lib wheels")
    p.add_argument("--source", default=REPO, help="the aimo_lib checkout to build")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="only aimo_lib's wheel (no runtime wheels)")
    p.add_argument("--python-version", default="3.11", help="the Kaggle image's Python")
    p.add_argument("--platform", action="append", default=None,
                   help="wheel platform tags (repeatable); default manylinux x86_64 tags")
    p.set_defaults(func=wheelhouse)

    p = add("push-dataset", "create or version a dataset from a folder")
    p.add_argument("dir")
    p.add_argument("--new", action="store_true", help="create it (first time)")
    p.add_argument("--message", "-m", default="update")
    p.set_defaults(func=push_dataset)

    p = add("kernel-metadata", "a folder to push for a competition: the notebook and its "
            "metadata (data source, machine_shape, model)")
    p.add_argument("--competition", required=True, help="aimo1 | aimo2 | aimo3")
    p.add_argument("--out", default="build/kernel", help="the folder to write")
    p.add_argument("--user", default=None, help="your Kaggle username (replaces the "
                   "placeholder)")
    p.add_argument("--model-source", action="append", default=None,
                   help="owner/model/framework/variation/version of the attached model "
                   "(repeatable), e.g. for gpt-oss on AIMO 3")
    p.set_defaults(func=kernel_metadata)

    p = add("push-kernel", "push kaggle_notebook.ipynb with its metadata")
    p.add_argument("--dir", default=REPO, help="folder with kernel-metadata.json")
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
    if getattr(args, "platform", "unset") is None:
        args.platform = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                         "manylinux2014_x86_64"]
    args.func(args)


if __name__ == "__main__":
    main()
