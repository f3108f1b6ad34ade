"""Reading gin files: where they are found, and the mistakes caught before any work starts.

gin reports an unknown parameter, an unset REQUIRED macro or a typo in a command-line macro only when the run
reaches the configurable, if at all. :func:`parse` reads the files (following includes) with gin's own parser
first, checks every binding against the parameters the registered configurables accept (configs.py gives that
table) and fails with one line naming the binding's file and line, or flag, and the closest known name.

The ``gin/`` files ship inside the package (``synpro_jax/gin`` in a wheel; the checkout's ``gin/`` in an editable
install), so ``--gin_file=gin/experiments/markov_tiny.gin`` and the files' ``include`` lines resolve from any
working directory: gin looks in the working directory, then in ``--gin_search_paths``, then beside the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import difflib
import logging
import os
from typing import Any

from etils.epath import Path
import gin
from gin import config_parser

from synpro_jax.errors import ConfigError

__all__ = ["GinConfigError", "gin_search_root", "search_paths", "find_gin_file", "did_you_mean", "scan", "parse"]


class GinConfigError(ConfigError):
    """A gin file or binding that cannot work; the message is one line and names the binding."""


def gin_search_root() -> Path:
    """The folder that holds ``gin/``: the installed package (a wheel ships the files as ``synpro_jax/gin``) or
    the source checkout (an editable install reads the checkout's ``gin/``)."""
    here = Path(__file__).resolve().parent
    return here if (here / "gin").is_dir() else here.parent


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Where gin files and their includes are looked for after the working directory: ``extra`` (t5x's
    ``--gin_search_paths``) in order, then the files that ship with synpro_jax."""
    return [str(Path(p).expanduser()) for p in extra if p] + [str(gin_search_root())]


def find_gin_file(name: str, paths: Sequence[str]) -> Path:
    """The file gin will read for ``name`` (the working directory first, then ``paths``, as gin searches)."""
    candidates = [name] if os.path.isabs(name) else [name, *(os.path.join(p, name) for p in paths)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return Path(candidate)
    raise GinConfigError(
        f"gin file {name!r} not found in the working directory {os.getcwd()} or the search paths "
        f"{list(paths)} (add its folder with --gin_search_paths)"
    )


def did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


class _Ref:
    """A ``@configurable`` or ``%macro`` while scanning (printed as written)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _ScanDelegate(config_parser.ParserDelegate):
    def __init__(self):
        self.macros_used: set[str] = set()

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Ref("@" + scoped_configurable_name + ("()" if evaluate else ""))

    def macro(self, macro_name):
        self.macros_used.add(macro_name)
        return _Ref("%" + macro_name)


@dataclasses.dataclass(frozen=True)
class _Binding:
    name: str  # a macro's (scoped) name, or scope/selector
    param: str  # "" for a macro
    value: Any
    where: str  # file:line, or the command-line flag

    @property
    def selector(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def scan(gin_files: Sequence[str], bindings: Sequence[str], paths: Sequence[str]):
    """Read the files (following includes as gin does) and bindings with gin's own parser, without binding
    anything: (file bindings, command-line bindings, macros referenced anywhere)."""
    delegate = _ScanDelegate()

    def statements(text_or_file, where_of):
        out = []
        for st in config_parser.ConfigParser(text_or_file, delegate):
            if isinstance(st, config_parser.BindingStatement):
                name = f"{st.scope}/{st.selector}" if st.scope else st.selector
                out.append(_Binding(name, st.arg_name, st.value, where_of(st.location)))
            elif isinstance(st, config_parser.IncludeStatement):
                out.append(st)
        return out

    file_bindings: list[_Binding] = []

    def read(name: str, stack: tuple[str, ...]) -> None:
        path = find_gin_file(name, paths)
        if str(path.resolve()) in stack:
            raise GinConfigError(f"gin file {path} includes itself (through {' -> '.join(stack)})")
        with open(path, encoding="utf-8") as f:
            found = statements(f, lambda loc: f"{path}:{loc.line_num}")
        for st in found:
            if isinstance(st, config_parser.IncludeStatement):
                read(st.filename, stack + (str(path.resolve()),))
            else:
                file_bindings.append(st)

    for name in gin_files:
        read(name, ())
    cli = []
    for text in bindings:
        cli += [b for b in statements(text, lambda loc, t=text: f"--gin.{t}") if isinstance(b, _Binding)]
    return file_bindings, cli, delegate.macros_used


def _check(file_bindings: list[_Binding], cli: list[_Binding], macros_used: set[str], table) -> None:
    """Mistakes gin would accept silently or report only when the run calls the configurable."""
    file_macros = {b.name for b in file_bindings if not b.param}
    known = file_macros | {f"{b.selector}.{b.param}" for b in file_bindings if b.param}
    known |= {f"{sel}.{p}" for sel, params in table.items() for p in params}
    for b in cli:  # a command-line macro that nothing defines or reads is a typo of a real one
        if not b.param and b.name not in file_macros and b.name not in macros_used:
            raise GinConfigError(
                f"{b.where}: no gin file defines or uses a macro {b.name}{did_you_mean(b.name, known)}"
            )
    for b in file_bindings + cli:
        if not b.param:
            continue
        matches = [sel for sel in table if sel == b.selector or sel.endswith("." + b.selector)]
        if not matches and b.selector.startswith("synpro."):
            raise GinConfigError(
                f"{b.where}: there is no configurable {b.selector}"
                f"{did_you_mean(b.selector, table) or '; known: ' + ', '.join(sorted(table))}"
            )
        if len(matches) == 1 and b.param not in table[matches[0]]:
            params = table[matches[0]]
            raise GinConfigError(
                f"{b.where}: {matches[0]} has no parameter {b.param!r}"
                f"{did_you_mean(b.param, params) or '; its parameters: ' + ', '.join(params)}"
            )
    final = {}
    for b in file_bindings + cli:  # later bindings override earlier ones, as in gin
        final[(b.name, b.param)] = b.value
    missing = [name for (name, param), value in final.items() if not param and repr(value) == "%gin.REQUIRED"]
    if missing:
        raise GinConfigError(
            f"gin macros {missing} are REQUIRED: set them in an experiment file or with --gin.{missing[0]}=VALUE"
        )
    unset = [f"{name}.{param}" for (name, param), value in final.items() if param and repr(value) == "%gin.REQUIRED"]
    if unset:
        raise GinConfigError(
            f"gin bindings {unset} are REQUIRED: set them in an experiment file or with --gin.{unset[0]}=VALUE"
        )


class _QuietGinSearch(logging.Filter):
    """gin's package-resource reader logs every search-path miss as an ERROR, even when a later path has the
    file; a file that is truly missing raises instead, so these records say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and record.getMessage().startswith("Path not found")
        )


_SEARCH_PATHS_ADDED: set[str] = set()


def parse(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    parameters: Mapping[str, Sequence[str]],
    gin_search_paths: Sequence[str] = (),
) -> None:
    """Parse gin files and KEY=VALUE bindings, after checking them against ``parameters`` (full selector -> the
    parameter names it accepts): an unknown parameter or a command-line macro that no file defines or reads
    (``--gin.LEARNING_RAT=1e-3``) fails naming the closest known name, and so do REQUIRED macros left unset.
    Files are searched in the working directory, ``gin_search_paths``, then the package's own gin files.
    Replaces any configuration parsed before."""
    paths = search_paths(gin_search_paths)
    file_bindings, cli, used = scan(gin_files, bindings, paths)
    _check(file_bindings, cli, used, parameters)
    if not any(isinstance(f, _QuietGinSearch) for f in logging.getLogger().filters):
        logging.getLogger().addFilter(_QuietGinSearch())
    for path in paths:
        if path not in _SEARCH_PATHS_ADDED:
            gin.add_config_file_search_path(path)
            _SEARCH_PATHS_ADDED.add(path)
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [str(find_gin_file(f, paths)) for f in gin_files], list(bindings), finalize_config=False
    )
