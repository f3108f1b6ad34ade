"""The user's errors, told apart from bugs.

``synpro`` prints a user error as one line and exits 2, which supervisors (tpu/babysit.py, a scheduler) take to mean
that the same command would fail again; anything else that escapes a command is a bug, and Python prints its
traceback (exit 1). A user error is one of:

- a :class:`ConfigError`, which code raises when what the user asked for cannot work: a flag, a gin binding or
  config value, an input that does not fit (a checkpoint of another configuration, hosts that disagree on the run
  directory). Its message names the flag or knob and says what to change;
- any error raised while the configuration is read and built (:func:`from_configuration`): gin parsing the files
  and bindings, the checks of synpro_jax/gin_files.py, a job's objects built from the bindings by
  synpro_jax/configs.py (a config dataclass's ``__post_init__`` check, ``synpro.preset``'s unknown name, a
  REQUIRED parameter left unbound), whatever its type;
- a missing input (FileNotFoundError) or an output that would be overwritten (FileExistsError), which name the path.

A ValueError, KeyError or TypeError raised by a job's own code is a bug.
"""

from __future__ import annotations

# Where the configuration is read and built: gin, and synpro_jax's gin registration, which builds each job's objects
# (the jobs themselves never call back into it).
CONFIGURATION_MODULES = ("gin", "synpro_jax.gin_files", "synpro_jax.configs")


class ConfigError(ValueError):
    """A flag, gin binding, config value or input that cannot work; the message names it and what to change.
    A ValueError, so code that checks values catches it as it catches theirs."""


def from_configuration(error: BaseException) -> bool:
    """Whether ``error`` was raised while the configuration was read or built: its traceback runs through one of
    :data:`CONFIGURATION_MODULES` (or a module inside them)."""
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if any(module == m or module.startswith(m + ".") for m in CONFIGURATION_MODULES):
            return True
        tb = tb.tb_next
    return False


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (see the module docstring): one line and exit 2, not a traceback."""
    return isinstance(error, (ConfigError, FileNotFoundError, FileExistsError)) or from_configuration(error)


def one_line(error: BaseException) -> str:
    """A user error's message as one line. gin appends "In call to configurable ..." (the message already names
    the knob) and, for a parse error, the binding with a caret under it."""
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and set(line) != {"^"} and not line.startswith("In call to ")]
    if isinstance(error, KeyError) and lines and len(lines[0]) > 1 and lines[0][0] == lines[0][-1] in "'\"":
        lines[0] = lines[0][1:-1]  # str(KeyError) is the repr of its message
    return " ".join(lines)
