"""The run configuration: one typed `RunConfig`, set one way from every source.

    config = RunConfig.load(notebook=globals())            # the notebook's UPPERCASE names
    config = RunConfig.load(cli=vars(args))                # `aimo`'s flags (add_arguments)
    config = RunConfig.load(values={"temperature": 0.5})   # code, a YAML mapping (KTO)

Every setting has one name, the field's own: the run's (`RunConfig`: competition, problems,
budget, output), the engine's (`EngineSpec`: engine, model, openai_url, max_concurrency) and
every `SolverConfig` field (temperature, num_samples, code_timeout_s, ...; None keeps the
preset's). The same name is a notebook parameter (`TEMPERATURE`), an environment variable
(`AIMO_TEMPERATURE`), a command-line flag (`--temperature`) and a YAML key (`temperature:`),
so a field added to SolverConfig is settable everywhere at once. Later sources win:
defaults < the YAML file named by `config` < AIMO_* variables < notebook parameters / flags.
A name that is no setting is an error that names it (and the nearest setting).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .budget import POLICIES
from .competitions import COMPETITIONS
from .engines.factory import EngineSpec
from .engines.settings import VLLMSettings
from .fields import check_fields, check_value, help_of, setting
from .presets import AUTO_PRESETS, PRESETS, SolverConfig, config_for_run
from .stopping import RULES, StopRule

__all__ = ["SETTINGS", "ConfigError", "RunConfig", "Setting", "add_arguments", "parse_value",
           "shown_default"]

ENV_PREFIX = "AIMO_"
# AIMO_* variables that are not run settings: where aimo_lib keeps its cache, finds Numina's
# validation sets, and finds Kaggle's input folder (a rehearsal points it elsewhere).
ENV_NOT_SETTINGS = ("AIMO_CACHE", "AIMO_DATA_DIR", "AIMO_KAGGLE_INPUT")


class ConfigError(ValueError):
    """A setting that does not exist, or a value it cannot take."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is configured by. Build it with `RunConfig.load(...)`."""

    competition: str = setting(
        "auto", "auto (the competition whose data is attached on Kaggle, else aimo1) | aimo1 | "
        "aimo2 | aimo3", choices=lambda: ("auto", *COMPETITIONS))
    preset: str = setting(
        "auto", "a name in aimo_lib.presets.PRESETS; auto: from the model (embedded_cpu for the "
        "embedded SmolLM2, aimo3_gpt_oss for gpt-oss, else default)",
        choices=lambda: ("auto", *PRESETS))
    problems: str = setting(
        "auto", "off Kaggle's rerun: a .jsonl/.csv of problems (id, problem, answer), "
        "\"samples\", or auto (the competition's CSV on Kaggle, else the samples shipped with "
        "aimo_lib)")
    limit: int | None = setting(None, "serve only the first N problems", ge=1)
    out_dir: str = setting(
        "submission", "submission files, results.jsonl, config.json, report.txt")
    total_hours: float | None = setting(
        None, "the run's time budget, hours (at least 0.1: 50 problems then get a few seconds "
        "each); None: the competition's", ge=0.1, le=1000.0)
    time_policy: str = setting(
        "auto", "how the budget sets each problem's limit: banked (the AIMO 2 winner's: a base "
        "share plus up to 60% of it from the bank), reserve (the AIMO 3 top notebooks': all "
        "but 300 s for each problem to come, 300-900 s), auto (reserve for aimo3, else banked)",
        choices=lambda: ("auto", *POLICIES))
    time_limit_s: float | None = setting(
        None, "a fixed limit per problem, seconds; None: the budget's share",
        ge=1.0, le=1e6)
    seed: int = setting(0, "base seed of every sample's sampling", ge=0, le=2**63 - 1)
    max_restarts: int = setting(
        3, "times a dead engine is rebuilt in a row (an engine that then answers a problem "
        "resets it)", ge=0, le=100)
    config: str | None = setting(
        None, "a YAML file of settings (applied before the others)")
    engine: EngineSpec = field(default_factory=lambda: EngineSpec(model="auto"))
    # SolverConfig fields given by name, each checked at load (the rest are the preset's)
    solver: Mapping[str, Any] = field(default_factory=dict)
    # The run's SolverConfig, set by aimo_lib.resolve.resolve (None: not resolved yet)
    resolved: SolverConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        for name, value in self.solver.items():
            s = SETTINGS.get(name)
            if s is None or s.section != "solver":
                raise ValueError(_unknown(name, "solver setting"))
            check_value(name, s.type, value, s.meta)

    @classmethod
    def load(cls, *, values: Mapping[str, Any] | None = None,
             notebook: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None,
             env: Mapping[str, str] | None = None) -> RunConfig:
        """Defaults < YAML (`config`) < AIMO_* environment < values / notebook / cli.

        values: setting names (any case) to values, typed or strings. notebook: a notebook's
        globals; its all-UPPERCASE names are settings (None: not given). cli: argparse's
        namespace as a dict (flags made by add_arguments; None: not given). env: default
        os.environ.
        """
        given: dict[str, Any] = {}
        if notebook is not None:
            given.update({k: v for k, v in notebook.items()
                          if k.isupper() and not k.startswith("_") and v is not None})
        if cli is not None:
            given.update({k: v for k, v in cli.items() if k in SETTINGS and v is not None})
        given.update({k: v for k, v in (values or {}).items() if v is not None})
        given = _by_name(given, "setting")
        from_env = _by_name(_env_settings(os.environ if env is None else env), "variable",
                            prefix=ENV_PREFIX)
        path = given.get("config") or from_env.get("config")
        if path is not None:
            path = parse_value(SETTINGS["config"], path)
        merged = {**(_yaml_settings(path) if path else {}), **from_env, **given}
        return cls.from_settings(merged)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RunConfig:
        """A RunConfig from setting names (lowercase) to values, typed or strings."""
        run, engine, vllm, solver = {}, {}, {}, {}
        for name, raw in settings.items():
            s = SETTINGS.get(name)
            if s is None:
                raise ConfigError(_unknown(name, "setting"))
            value = parse_value(s, raw)
            {"run": run, "engine": engine, "vllm": vllm, "solver": solver}[s.section][
                s.field] = value
        try:
            config = cls(**run, engine=EngineSpec(**{"model": "auto", **engine},
                                                  vllm=VLLMSettings(**vllm)), solver=solver)
            config._check_solver()
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        return config

    def _check_solver(self) -> None:
        """The solver settings together with the preset (each was checked alone already): a
        concrete preset or model is checked now; with both on auto, the settings must make a
        valid config with at least one preset that auto can choose (resolve checks the one)."""
        if self.model != "auto" or self.preset != "auto":
            self.build_solver()
            return
        errors = []
        for preset in AUTO_PRESETS:
            try:
                SolverConfig.preset(preset, **self.solver)
                return
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])

    @property
    def model(self) -> str | None:
        return self.engine.model

    def with_settings(self, **settings) -> RunConfig:
        """This config with more settings given by name (solver fields included)."""
        merged = {**self.settings(), **settings}
        return RunConfig.from_settings(merged)

    def settings(self) -> dict[str, Any]:
        """The settings given (every run and engine field, the solver fields set)."""
        owner = {"run": self, "engine": self.engine, "vllm": self.engine.vllm}
        out = {s.name: getattr(owner[s.section], s.field)
               for s in SETTINGS.values() if s.section != "solver"}
        out.update(self.solver)
        return out

    def solver_config(self, seed: int | None = None) -> SolverConfig:
        """The run's SolverConfig (with `seed` instead of the run's, if given); the config
        must have been resolved (aimo_lib.resolve.resolve)."""
        if self.resolved is None:
            raise ConfigError("this RunConfig is not resolved: pass it through "
                              "aimo_lib.resolve.resolve(config, machine_probe()) first")
        return self.resolved if seed is None else replace(self.resolved, seed=seed)

    def build_solver(self) -> SolverConfig:
        """The preset (auto: chosen for the model) with the solver settings given over it:
        what resolve() makes the run's SolverConfig once the model and competition are known."""
        competition = "aimo1" if self.competition == "auto" else self.competition
        preset = config_for_run(self.preset, self.model, served=self.engine.kind == "openai",
                                competition=competition, seed=self.seed)
        return replace(preset, **self.solver)  # None given is None (EARLY_STOP=off)

    def to_dict(self) -> dict:
        """For config.json beside a run's results."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("engine", "solver", "resolved")}
        out["engine"] = dataclasses.asdict(self.engine)
        out["solver"] = {k: _jsonable(v) for k, v in self.solver.items()}
        return out


# ---------------------------------------------------------------- the settings table


@dataclass(frozen=True)
class Setting:
    name: str  # the one name: a YAML key; --name-with-dashes; NAME; AIMO_NAME
    section: str  # "run", "engine" or "solver"
    field: str  # the dataclass field it sets
    type: Any  # the field's type (resolved)
    default: Any
    help: str
    meta: Mapping[str, Any] = field(default_factory=dict)  # its declared range (fields.setting)


# Settings of the run that SolverConfig also has: the run's value is passed on.
_SHARED = ("competition", "seed")


def _settings() -> dict[str, Setting]:
    table: dict[str, Setting] = {}
    engine_defaults = RunConfig().engine
    for section, cls, skip in (("run", RunConfig, ("engine", "solver", "resolved")),
                               ("engine", EngineSpec, ("vllm", "fallback_hf")),
                               ("vllm", VLLMSettings, ()),
                               ("solver", SolverConfig, ("name", *_SHARED))):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in skip:
                continue
            name = f.metadata.get("setting", f.name)
            default = (getattr(engine_defaults, f.name) if section == "engine" else
                       getattr(engine_defaults.vllm, f.name) if section == "vllm" else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            table[name] = Setting(name, section, f.name, hints[f.name], default,
                                  help_of(f), f.metadata)
    return table


SETTINGS: dict[str, Setting] = _settings()


def _by_name(given: Mapping[str, Any], kind: str, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in given.items():
        name = key[len(prefix):].lower().replace("-", "_")
        if name not in SETTINGS:
            raise ConfigError(_unknown(key, kind, prefix))
        out[name] = value
    return out


def _unknown(key: str, kind: str, prefix: str = "") -> str:
    name = key[len(prefix):].lower().replace("-", "_")
    near = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.6)
    shown = (lambda n: prefix + n.upper()) if prefix or key.isupper() else (lambda n: n)
    hint = f"; did you mean {shown(near[0])}?" if near else ""
    return (f"unknown {kind} {key!r}{hint} (the settings: {', '.join(sorted(SETTINGS))}; "
            "see README, Configuration reference)")


def _env_settings(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and k not in ENV_NOT_SETTINGS and v != ""}


def _yaml_settings(path: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading {path} needs PyYAML: pip install pyyaml") from None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"config: cannot read the settings file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} holds no mapping of setting names to values")
    return _by_name({str(k): v for k, v in data.items()}, f"setting in {path}")


# ---------------------------------------------------------------- values


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NONE = ("", "none", "null")


def parse_value(setting: Setting, raw: Any) -> Any:
    """`raw` (a string from the environment or a flag, or a typed value from code, a notebook
    or YAML) as the setting's type; ConfigError with what it takes otherwise."""
    try:
        value = _parse(setting.type, raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{setting.name}: {raw!r} is not a valid value ({exc})") from None
    try:
        check_value(setting.name, setting.type, value, setting.meta)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return value


def _parse(kind: Any, raw: Any) -> Any:
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        args = typing.get_args(kind)
    if kind is StopRule:
        return _early_stop(raw)
    if typing.get_origin(kind) is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(str(x).strip() for x in items if str(x).strip())
    if typing.get_origin(kind) in (Mapping, dict) or kind is dict:
        if isinstance(raw, str):  # from the environment or a flag: JSON
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise ValueError("expected a JSON object, e.g. '{\"swap_space\": 4}'") from None
        if not isinstance(raw, Mapping):
            raise TypeError("expected a mapping")
        return dict(raw)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("expected an integer")
        return int(raw) if not isinstance(raw, str) else int(raw.strip())
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        return float(raw)
    if kind is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise TypeError("expected a string")
        return str(raw)
    return raw


def _early_stop(raw: Any) -> StopRule | None:
    """off | on | a rule's name (table, share, beta, dirichlet, unbeatable) | a table such as
    "4/4,5/7,6/9" (k of at most n) | a mapping of StopRule's fields."""
    if raw is None or isinstance(raw, StopRule):
        return raw
    if isinstance(raw, Mapping):
        names = [f.name for f in fields(StopRule)]
        unknown = set(raw) - set(names)
        if unknown:
            raise ValueError(f"no early-stop field {sorted(unknown)[0]!r} (it has "
                             f"{', '.join(names)})")
        table = raw.get("table")
        return StopRule(**{**raw, **({"table": _table(table)} if table is not None else {})})
    text = str(raw).strip().lower()
    if text in (*_NONE, "off", "false", "0"):
        return None
    if text in ("on", "true", "1", "default"):
        return StopRule()
    if text in RULES:
        return StopRule(rule=text)
    try:
        return StopRule(table=_table(text))
    except ValueError:
        raise ValueError(f"expected off, on, {', '.join(RULES)} or a table like 4/4,5/7"
                         ) from None


def _table(raw: Any) -> tuple[tuple[int, int], ...]:
    """An early-stop table: "4/4,5/7", ["4/4", "5/7"] or [[4, 4], [5, 7]] (k of at most n)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"an early-stop table is a list of k/n pairs, not {raw!r}")
    pairs = []
    for item in items:
        if isinstance(item, str) and re.fullmatch(r"\s*\d+\s*/\s*\d+\s*", item):
            k, n = item.split("/")
            pairs.append((int(k), int(n)))
        elif (isinstance(item, (list, tuple)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item)):
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(f"an early-stop table entry is k/n or [k, n], not {item!r}")
    if not pairs:
        raise ValueError("an early-stop table needs at least one k/n pair")
    return tuple(pairs)


def _jsonable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ---------------------------------------------------------------- command-line flags


SHORT_FLAGS = {"num_samples": ("-n",), "max_rounds": ("-m",)}


def add_arguments(parser, sections: tuple[str, ...] = ("run", "engine", "vllm", "solver"),
                  skip: tuple[str, ...] = ()) -> None:
    """A flag per setting (--temperature, --code-timeout-s, ...), grouped by section, each
    defaulting to None (not given: the lower sources decide). Repeatable for lists."""
    titles = {"run": "run", "engine": "engine", "vllm": "vLLM engine (default: vLLM's)",
              "solver": "solver (default: the preset's)"}
    for section in sections:
        group = parser.add_argument_group(titles[section])
        for s in SETTINGS.values():
            if s.section != section or s.name in skip:
                continue
            flags = [f"--{s.name.replace('_', '-')}", *SHORT_FLAGS.get(s.name, ())]
            repeat = typing.get_origin(s.type) is tuple
            shown = shown_default(s.default)
            help_ = (s.help or s.name).replace("%", "%%")
            if section not in ("solver", "vllm"):
                help_ += f" (default: {shown})"
            group.add_argument(*flags, dest=s.name, default=None,
                               action="append" if repeat else "store", help=help_,
                               metavar=s.name.upper() if not repeat else "VALUE")


def replace_engine(config: RunConfig, **changes) -> RunConfig:
    """The config with its EngineSpec changed (e.g. the model found on Kaggle)."""
    return replace(config, engine=replace(config.engine, **changes))


def shown_default(value: Any) -> str:
    if isinstance(value, StopRule):
        return f"on ({value.label})"
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
