"""Which code a config may run: the trust check behind ``model.name: package.module:callable``.

A config naming ``my_pkg.module:build`` imports ``my_pkg`` and calls ``build`` — arbitrary code, run again by
``kdlab evaluate``, by every run that rebuilds that model as a teacher, by ``export`` and ``report``. A config
is data someone may hand you, so kdlab runs such code only when it is plainly the user's own: the module's
file lies under the config file's directory or the current working directory (both are searched, so a
module beside the config needs no ``PYTHONPATH``). Anything else — ``torch.hub:load``, ``builtins:eval``,
``os:system``, any installed package — is refused with one line unless the user opts in: ``--trust-remote-code``
on the CLI, ``KDLAB_TRUST_REMOTE_CODE=1``, or ``trust_remote_code=True`` on the Python API. kdlab's own
registered names (``mlp``, ``cnn``, ...) never come here.

The decision is made before anything of the module runs: the top-level package is located with
``importlib.util.find_spec`` (which executes nothing for a top-level name), and only then imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kdlab.errors import ConfigError

ENV = "KDLAB_TRUST_REMOTE_CODE"
ROOTS_ENV = "KDLAB_IMPORT_ROOTS"  # extra directories of the user's own code (os.pathsep-separated): sweep workers
OPT_IN = f"pass --trust-remote-code (or set {ENV}=1, or trust_remote_code=True in Python)"


@dataclass(frozen=True)
class ImportPolicy:
    """Where the user's own modules live (``roots``, searched first) and whether other code is trusted."""

    roots: tuple[Path, ...]
    trust_remote_code: bool


_POLICY: ContextVar[ImportPolicy | None] = ContextVar("kdlab_import_policy", default=None)


def _env_trust() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _env_roots() -> tuple[Path, ...]:
    return tuple(Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p)


def current() -> ImportPolicy:
    """The policy in force: the innermost ``import_policy``, else the current directory and the environment."""
    policy = _POLICY.get()
    if policy is not None:
        return policy
    return ImportPolicy(roots=(Path.cwd(), *_env_roots()), trust_remote_code=_env_trust())


@contextmanager
def import_policy(
    config_dir: str | os.PathLike[str] | None = None, trust_remote_code: bool | None = None
) -> Iterator[ImportPolicy]:
    """Search ``config_dir`` (then the current directory) for the user's own modules, and trust other code when
    ``trust_remote_code`` (None: as the enclosing policy or the environment says). A run directory's config
    also searches the roots the run recorded (``save_roots``). Nests; restores on exit."""
    outer = current()
    given = [Path(config_dir), *saved_roots(Path(config_dir))] if config_dir is not None else []
    roots = tuple(dict.fromkeys([*given, *outer.roots]))
    trusted = outer.trust_remote_code or bool(trust_remote_code)
    token = _POLICY.set(ImportPolicy(roots=roots, trust_remote_code=trusted))
    try:
        yield _POLICY.get()  # type: ignore[misc]
    finally:
        _POLICY.reset(token)


ROOTS_FILE = "import_roots.json"  # in a run directory: where its config's own modules were found


def save_roots(out: Path) -> None:
    """Record the directories of the user's own code in force (the config's directory, the cwd) in the run, so
    that ``kdlab evaluate RUN`` started elsewhere finds a module that sat beside the original config."""
    from kdlab.io import atomic_write_json

    atomic_write_json(out / ROOTS_FILE, {"roots": [str(r.resolve()) for r in current().roots]})


def saved_roots(run: Path) -> tuple[Path, ...]:
    """The roots a run recorded (none for older runs or an unreadable file: the run directory and the cwd still
    count). Installed code stays outside the user's own code whatever a run says (``is_own_code``)."""
    import json

    try:
        roots = json.loads((run / ROOTS_FILE).read_text()).get("roots", [])
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(Path(r) for r in roots if isinstance(r, str) and Path(r).is_dir())


def policy_environment() -> dict[str, str]:
    """The policy in force as environment variables, for a child ``kdlab`` process (a sweep's parallel jobs)."""
    policy = current()
    env = {ROOTS_ENV: os.pathsep.join(str(r) for r in policy.roots)}
    if policy.trust_remote_code:
        env[ENV] = "1"
    return env


def _installed_dirs() -> list[Path]:
    """Directories of installed code (the standard library, site-packages, a virtual environment)."""
    paths = sysconfig.get_paths()
    dirs = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    dirs += [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]
    if sys.prefix != sys.base_prefix:  # a virtual environment (it may sit inside the project)
        dirs.append(sys.prefix)
    return [Path(d).resolve() for d in dirs if d]


def _locations(spec: importlib.machinery.ModuleSpec) -> list[Path]:
    if spec.origin and spec.has_location:
        return [Path(spec.origin).resolve()]
    return [Path(p).resolve() for p in (spec.submodule_search_locations or [])]


def _under(path: Path, dirs: list[Path]) -> bool:
    return any(path.is_relative_to(d) for d in dirs)


def is_own_code(spec: importlib.machinery.ModuleSpec, roots: tuple[Path, ...]) -> bool:
    """Whether every file of ``spec`` lies under one of ``roots`` and outside installed code."""
    places = _locations(spec)
    own = [r.resolve() for r in roots]
    installed = _installed_dirs()
    return bool(places) and all(_under(p, own) and not _under(p, installed) for p in places)


def _where(spec: importlib.machinery.ModuleSpec) -> str:
    places = _locations(spec)
    return str(places[0]) if places else (spec.origin or "built in")


@contextmanager
def _searching(roots: tuple[Path, ...]) -> Iterator[None]:
    """``roots`` at the front of ``sys.path`` for the duration of one import."""
    added = [str(r) for r in roots if str(r) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()  # a module written since the last import must be seen
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def import_user_module(module_name: str, spec: str) -> ModuleType:
    """Import ``module_name`` for the model ``spec`` if the policy allows it; every refusal or failure is one
    ``ValueError`` line (``ConfigError`` for a refusal) naming the module and where it was looked for."""
    policy = current()
    top = module_name.split(".")[0]
    searched = ", ".join(str(r) for r in policy.roots) + " and the installed packages"
    with _searching(policy.roots):
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError) as err:
            found, problem = None, f"{type(err).__name__}: {err}"
        else:
            problem = f"No module named {top!r}"
        if found is None:
            raise ValueError(
                f"cannot import module {module_name!r} for model {spec!r}: {problem} (searched: {searched})"
            )
        if top != "kdlab" and not policy.trust_remote_code and not is_own_code(found, policy.roots):
            raise ConfigError(
                f"model {spec!r} runs code from outside your project ({top} at {_where(found)}; your own code "
                f"is looked for under {', '.join(str(r) for r in policy.roots)}): {OPT_IN} if you trust it"
            )
        try:
            return importlib.import_module(module_name)
        except Exception as err:
            raise ValueError(
                f"cannot import module {module_name!r} for model {spec!r}: {type(err).__name__}: {err} "
                f"(searched: {searched})"
            ) from err
