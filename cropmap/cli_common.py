"""What every ``cropmap`` command shares: one option vocabulary, one exit-code policy, one error formatter.

The command family (docs/cli.md) is the root group in :mod:`cropmap.cli` plus the plugin groups that the
``train`` and ``export`` extras register through the ``cropmap.commands`` entry points (``cropmap data``,
``cropmap train``, ``cropmap evaluate``, ``cropmap export``). Each of their commands builds its options from the
decorators here, so one word means one thing everywhere:

========================  ==================================================================================
``-v/--verbose``          counter: ``-v`` info, ``-vv`` debug (one rule for the cropmap, training, exporters loggers)
``-q/--quiet``            counter: ``-q`` errors only
``-o/--output PATH``      what the command writes (a file or a folder)
``--overwrite``           replace an existing output; without it an existing output is an error (exit 1)
``--json``                a machine-readable summary on stdout
``--device``              ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (resolved by ``training.device``)
``--precision``           compute precision in training: ``fp32``, ``bf16``, ``fp16``, ``auto``
``--weights``             storage precision of an exported bundle: ``fp32``, ``fp16``, ``int8``
``--seed``, ``--threads`` random seed; CPU threads
``--family``              a model family, repeatable (``--family lstm --family transformer``)
========================  ==================================================================================

Old spellings of documented commands (``--out``, ``--out-dir``, ``--families``, the exporter's
``--precision``...) stay accepted as hidden aliases (:class:`AliasedOption`).

The exit-code policy (:func:`run_command`, also applied by :class:`PolicyGroup` to the root group): 0 ok; 1 for a
known error (a :class:`~cropmap.errors.CropmapError` or an ``OSError``), reported as one ``Error: ...`` line
(:func:`one_line`); 2 for a usage error (click's message naming the option); 130 on Ctrl-C and 143 on SIGTERM
(:func:`cropmap.safeio.signals_as_interrupts`). Anything else is a bug and keeps its traceback.

This module imports click and light cropmap modules only: ``--help`` of every command never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from cropmap.errors import CropmapError, OutputExistsError
from cropmap.safeio.oserrors import file_system_error
from cropmap.safeio.signals import interrupt_exit_code, signals_as_interrupts

__all__ = [
    "COMPUTE_PRECISIONS",
    "DEVICE_HELP",
    "LOGGERS",
    "WEIGHT_PRECISIONS",
    "AliasedOption",
    "LazyGroup",
    "PolicyGroup",
    "UnavailableCommand",
    "alias_option",
    "configure_logging",
    "device_option",
    "echo_json",
    "family_option",
    "interrupt_note",
    "json_option",
    "one_line",
    "output_option",
    "overwrite_option",
    "precision_option",
    "refuse_existing",
    "run_command",
    "seed_option",
    "threads_option",
    "verbosity_options",
    "weights_option",
]

F = TypeVar("F", bound=Callable[..., Any])

LOGGERS = ("cropmap", "training", "exporters")
"""The loggers that ``-v`` / ``-q`` set, with one rule."""

DEVICE_HELP = "auto (cuda if available), cpu, cuda, cuda:N"
COMPUTE_PRECISIONS = ("fp32", "bf16", "fp16", "auto")
"""``--precision``: the precision training computes in."""
WEIGHT_PRECISIONS = ("fp32", "fp16", "int8")
"""``--weights``: the precision an exported bundle stores its weights in."""

USAGE_EXIT = 2
ERROR_EXIT = 1


# ----------------------------------------------------------------------------------------------------------
# one error formatter, one exit-code policy


def one_line(err: BaseException) -> str:
    """An error as the one line a command prints after ``Error:``.

    A :class:`~cropmap.errors.CropmapError` already says what was found and what was expected: its message,
    whitespace collapsed. An ``OSError`` raised outside the steps that name their operation names its path and
    cause (``cropmap.safeio.file_system_error``), one raised with a message only keeps it; an existing output says
    how to replace it. Anything else: its message, or its type when the message is empty.
    """
    if isinstance(err, KeyboardInterrupt):
        _, name = interrupt_exit_code(err)
        return f"interrupted by {name}"
    if isinstance(err, OSError) and not isinstance(err, CropmapError):
        filename = getattr(err, "filename", None)
        if isinstance(err, FileExistsError) and filename:
            return f"{filename} exists; pass --overwrite to replace it"
        if err.errno is not None or filename is not None:  # a raw I/O fault: name the path and the cause
            err = file_system_error(err, "access", filename if filename is not None else "a file")
    text = " ".join(str(err).split())
    return text or type(err).__name__


def json_path_as_output(argv: Sequence[str], *, overwrite: bool = False) -> list[str]:
    """``--json OUT`` / ``--json=OUT`` (the file some ``python -m`` forms wrote before ``-o``) as ``--output OUT``.

    Only for those aliases, whose scripts use that spelling: ``--json`` followed by an option (or nothing) stays
    the flag that prints JSON on stdout. ``overwrite`` adds ``--overwrite`` when a path was given, for a form that
    always replaced its file.
    """
    out: list[str] = []
    args = list(argv)
    replaced = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if arg.startswith("--json="):
            out += ["--output", arg.split("=", 1)[1]]
            replaced = True
        elif arg == "--json" and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out += ["--output", args[i + 1]]
            replaced = True
            i += 1
        else:
            out.append(arg)
        i += 1
    if overwrite and replaced and "--overwrite" not in out:
        out.insert(out.index("--") if "--" in out else len(out), "--overwrite")
    return out


def _exit_status(code: object) -> int:
    """The exit status of a ``SystemExit`` code (``None`` is 0; a message is printed and is 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    click.echo(str(code), err=True)
    return ERROR_EXIT


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click command (or group) under the family's exit-code policy; returns the exit status.

    Args:
        command: The click command.
        argv: Its arguments (``None``: ``sys.argv[1:]``).
        prog_name: The name usage messages give it (``cropmap export bundle``, ``python -m exporters``).

    Returns:
        0 when it ran (or the ``int`` the command returned); 1 after one ``Error: ...`` line for a
        :class:`~cropmap.errors.CropmapError`, an ``OSError`` or a ``click.ClickException``; 2 after click's usage
        message; 128 + the signal number on Ctrl-C (130) or SIGTERM (143). Other exceptions propagate.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals_as_interrupts():  # SIGTERM -> Terminated, a KeyboardInterrupt: clean-up as on Ctrl-C
            try:
                result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
            except click.Abort as err:  # click turns KeyboardInterrupt into Abort; keep the signal
                cause = err.__cause__ or err.__context__
                if isinstance(cause, KeyboardInterrupt):
                    raise cause from None
                raise
    except KeyboardInterrupt as err:
        code, name = interrupt_exit_code(err)
        click.echo(f"Error: interrupted by {name}", err=True)
        return code
    except click.ClickException as err:  # UsageError / BadParameter: 2; ClickException: 1
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("Error: aborted", err=True)
        return ERROR_EXIT
    except (CropmapError, OSError) as err:
        click.echo(f"Error: {one_line(err)}", err=True)
        return ERROR_EXIT
    except SystemExit as err:
        return _exit_status(err.code)
    return result if type(result) is int else 0


class PolicyGroup(click.Group):
    """A click group whose standalone run (the console script) applies :func:`run_command`'s policy."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode or complete_var is not None or extra:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        sys.exit(run_command(self, args, prog_name or self.name or "cropmap"))


# ----------------------------------------------------------------------------------------------------------
# lazy plugin groups


def _missing(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that are not installed (found by ``importlib.util.find_spec``)."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


class UnavailableCommand(click.Command):
    """Stands for a subcommand whose module cannot be loaded: listed, and an ``Error:`` line when run."""

    def __init__(self, name: str, reason: str) -> None:
        self.reason = reason
        super().__init__(
            name,
            callback=self._fail,
            help=f"(unavailable: {reason})",
            short_help=f"(unavailable: {reason})",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,
        )

    def _fail(self) -> None:
        raise click.ClickException(self.reason)


class LazyGroup(click.Group):
    """A click group of commands imported only when one is run or its help printed.

    Args:
        name: The group's name (``train``).
        lazy: Subcommand name -> ``"module:attribute"`` of its click command.
        extra: The extra that installs what the group needs (``train``, ``export``).
        requires: The top-level modules that extra installs (``torch``, ``optuna``...). When one is missing,
            running the group (``--help`` included) prints one ``Error:`` line naming the extra, exit 1.
    """

    def __init__(
        self,
        name: str,
        lazy: Mapping[str, str],
        *,
        extra: str,
        requires: Sequence[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.lazy = dict(lazy)
        self.extra = extra
        self.requires = tuple(requires)

    def missing_extra(self) -> str | None:
        """The one-line hint when the modules of the extra are not installed, else ``None``."""
        if not _missing(self.requires):
            return None
        return f"'cropmap {self.name}' needs the {self.extra} extra: pip install \"cropmap[{self.extra}]\""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        hint = self.missing_extra()
        if hint is not None:
            raise click.ClickException(hint)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        target = self.lazy[cmd_name]
        module_name, _, attribute = target.partition(":")
        where = f"'cropmap {self.name} {cmd_name}'"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not (err.name == module_name or module_name.startswith(err.name + ".")):
                raise  # the module exists but imports something absent at module level: a bug, with traceback
            return UnavailableCommand(cmd_name, f"{where} is not installed: module {module_name} is missing")
        command = getattr(module, attribute, None)
        if not isinstance(command, click.Command):
            return UnavailableCommand(
                cmd_name, f"{where} is not installed: {module_name} has no command {attribute}"
            )
        return command


# ----------------------------------------------------------------------------------------------------------
# options


class AliasedOption(click.Option):
    """A click option with hidden alias spellings: accepted on the command line, left out of ``--help``.

    ``click.option("-o", "--output", "--out", cls=AliasedOption, hidden_aliases=("--out",))`` accepts ``--out``
    (the spelling older scripts use) while the help shows ``-o, --output``.
    """

    def __init__(self, *args: Any, hidden_aliases: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)
        unknown = [a for a in self.hidden_aliases if a not in (*self.opts, *self.secondary_opts)]
        if unknown:
            raise TypeError(f"hidden aliases {unknown} are not among the option's names {self.opts}")

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self.opts if o not in self.hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        saved = self.opts
        self.opts = [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = saved


def alias_option(*param_decls: str, hidden_aliases: Sequence[str] = (), **kwargs: Any) -> Callable[[F], F]:
    """``click.option`` whose ``hidden_aliases`` (among ``param_decls``) are accepted but not shown in help."""
    return click.option(*param_decls, cls=AliasedOption, hidden_aliases=hidden_aliases, **kwargs)


def configure_logging(verbose: int, quiet: int) -> None:
    """One logging rule for the cropmap, training and exporters loggers: warnings by default, ``-v`` info,
    ``-vv`` debug, ``-q`` errors only; messages go to stderr as ``LEVEL logger: message``."""
    level = max(logging.DEBUG, min(logging.ERROR, logging.WARNING - 10 * verbose + 10 * quiet))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def verbosity_options(f: F) -> F:
    """``-v/--verbose`` and ``-q/--quiet`` (both counters); sets the logging level before the command runs.

    The command's function takes neither parameter: the decorator consumes them.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, verbose: int, quiet: int, **kwargs: Any) -> Any:
        configure_logging(verbose, quiet)
        return f(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", count=True, help="Less log output (-q errors only).")(wrapper)
    wrapper = click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")(
        wrapper
    )
    return wrapper  # type: ignore[return-value]


def output_option(
    help: str = "What the command writes.",
    *,
    required: bool = True,
    aliases: Sequence[str] = ("--out",),
    metavar: str = "PATH",
    default: Path | None = None,
    dest: str = "output",
) -> Callable[[F], F]:
    """``-o/--output PATH``: what the command writes (a file or a folder), passed as ``output``.

    Args:
        help: What is written there.
        required: Whether the command needs it.
        aliases: Hidden old spellings (``--out``, ``--out-dir``).
        metavar: The help's placeholder.
        default: The default path when not required.
        dest: The parameter name the command's function takes.
    """
    extra: dict[str, Any] = {} if default is None else {"default": default}  # (an explicit None is a value)
    return alias_option(
        "-o",
        "--output",
        *aliases,
        dest,
        hidden_aliases=aliases,
        type=click.Path(path_type=Path),
        required=required,
        metavar=metavar,
        help=help,
        **extra,
    )


OVERWRITE_HELP = "Replace an existing output; without it an existing output is an error."


def overwrite_option(f: F | None = None, *, help: str = OVERWRITE_HELP) -> Any:
    """``--overwrite``: replace an existing output; without it an existing output is an error (exit 1).

    Use as ``@overwrite_option`` or, with a command's own wording, ``@overwrite_option(help=...)``.
    """

    def decorator(g: F) -> F:
        return click.option("--overwrite", is_flag=True, help=help)(g)

    return decorator if f is None else decorator(f)


def refuse_existing(path: Path, overwrite: bool, option: str = "--output") -> None:
    """Raise :class:`~cropmap.errors.OutputExistsError` when ``path`` exists and ``overwrite`` is false."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{option} {path} exists; pass --overwrite to replace it")


def json_option(f: F) -> F:
    """``--json``: print a machine-readable summary on stdout (passed as ``as_json``)."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print a machine-readable summary (JSON) on stdout."
    )(f)


def echo_json(summary: Mapping[str, Any]) -> None:
    """Print ``summary`` as one JSON document on stdout (keys sorted, paths as strings)."""
    click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceType(click.ParamType):
    """A ``--device`` value: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked here, resolved by torch later)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not _DEVICE.fullmatch(text):
            self.fail(f"{value!r} is not a device; expected {DEVICE_HELP}", param, ctx)
        return text

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "auto|cpu|cuda|cuda:N"


def device_option(default: str = "auto") -> Callable[[F], F]:
    """``--device auto|cpu|cuda|cuda:N`` (validated; ``training.device.resolve_device`` turns it into a device)."""
    return click.option(
        "--device",
        type=DeviceType(),
        default=default,
        show_default=True,
        help=f"Where to compute: {DEVICE_HELP}. A CUDA device torch cannot see is an error, never a CPU run.",
    )


def precision_option(default: str = "fp32", choices: Sequence[str] = COMPUTE_PRECISIONS) -> Callable[[F], F]:
    """``--precision``: the compute precision of training (``fp32``, ``bf16``, ``fp16``, ``auto``)."""
    return click.option(
        "--precision",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help="Compute precision (bf16/fp16: autocast with the loss in float32).",
    )


def weights_option(default: str = "fp32") -> Callable[[F], F]:
    """``--weights fp32|fp16|int8``: the storage precision of an exported bundle (hidden alias ``--precision``)."""
    return alias_option(
        "--weights",
        "--precision",
        "weights",
        hidden_aliases=("--precision",),
        type=click.Choice(list(WEIGHT_PRECISIONS)),
        default=default,
        show_default=True,
        help="Storage precision of the bundle: fp32; fp16 for GPUs; int8 for CPUs "
        "(refused when it disagrees with fp32 too often).",
    )


def seed_option(default: int = 0, help: str = "Random seed.") -> Callable[[F], F]:
    """``--seed N``."""
    return click.option("--seed", type=int, default=default, show_default=True, help=help)


def threads_option(
    default: int | None = None, help: str = "CPU threads (default: all cores)."
) -> Callable[[F], F]:
    """``--threads N`` (a positive count)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=default,
        metavar="N",
        show_default=default is not None,
        help=help,
    )


CLUSTER_CHOICES = ("htcondor", "lsf", "pbs", "sge", "slurm")
"""``--cluster`` values: the keys of :data:`cropmap.batch.CLUSTER_KINDS` (a test keeps them equal; listed here so
that ``--help`` does not import Dask)."""


def cluster_options(unit: str) -> Callable[[F], F]:
    """Workers started as jobs of an HPC scheduler (dask-jobqueue) and the Dask dashboard, the same options in every
    command that runs work on a cluster (``cropmap batch``, ``cropmap train downstream``): ``--cluster``,
    ``--queue``, ``--account``, ``--cores``, ``--memory``, ``--walltime``, ``--jobs``, ``--job-extra``,
    ``--dashboard``. ``unit`` names one piece of the work (``region``, ``run``) in the help."""
    decorators = [
        click.option(
            "--cluster",
            type=click.Choice(list(CLUSTER_CHOICES)),
            default=None,
            help="Start the workers as batch jobs of this HPC scheduler (dask-jobqueue, pip install "
            "'cropmap[hpc]'); unset settings come from its configuration file.",
        ),
        click.option(
            "--queue", default=None, metavar="NAME", help="With --cluster: queue (SLURM partition)."
        ),
        click.option(
            "--account",
            default=None,
            metavar="NAME",
            help="With --cluster: account (SLURM, PBS) or project (SGE, LSF) charged.",
        ),
        click.option(
            "--cores",
            type=int,
            default=None,
            metavar="N",
            help=f"With --cluster: cores per job (one single-threaded worker per core, one {unit} at a time).",
        ),
        click.option(
            "--memory", default=None, metavar="SIZE", help="With --cluster: memory per job, e.g. 64GB."
        ),
        click.option(
            "--walltime", default=None, metavar="HH:MM:SS", help="With --cluster: time limit per job."
        ),
        click.option(
            "--jobs",
            type=int,
            default=1,
            show_default=True,
            metavar="N",
            help="With --cluster: jobs to submit.",
        ),
        click.option(
            "--job-extra",
            "job_extra",
            multiple=True,
            metavar="DIRECTIVE",
            help="With --cluster: extra job-scheduler directive, repeatable (SLURM GPUs: --job-extra=--gres=gpu:1).",
        ),
        click.option(
            "--dashboard",
            default=None,
            metavar="ADDRESS",
            help="Serve the Dask dashboard of the cluster the command starts at ADDRESS, e.g. :8787 (default: none).",
        ),
    ]

    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def _split_families(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(name for item in value for name in item.split(",") if name.strip())
    choices = getattr(param, "family_choices", None)
    if choices is not None:
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise click.BadParameter(f"{', '.join(unknown)}; expected one of {', '.join(choices)}")
    return names


def family_option(
    choices: Sequence[str] | None = None, help: str = "A model family; repeat for several."
) -> Callable[[F], F]:
    """``--family NAME``, repeatable (``--family a --family b`` or ``--family a,b``), passed as ``family``
    (a tuple); the old ``--families`` is a hidden alias."""

    def decorator(f: F) -> F:
        f = alias_option(
            "--family",
            "--families",
            "family",
            hidden_aliases=("--families",),
            multiple=True,
            metavar="NAME",
            callback=_split_families,
            help=help + (f" One of: {', '.join(choices)}." if choices else ""),
        )(f)
        option = f.__click_params__[-1]  # type: ignore[attr-defined]
        option.family_choices = tuple(choices) if choices is not None else None
        return f

    return decorator


@contextlib.contextmanager
def interrupt_note(note: str) -> Iterator[None]:
    """On Ctrl-C or SIGTERM inside the block: ``Error: interrupted by SIGNAL; note`` and exit 128 + the signal.

    ``note`` says what the interrupted command left behind (``nothing was written``); without this block
    :func:`run_command` prints the line without it.
    """
    try:
        yield
    except KeyboardInterrupt as err:
        code, name = interrupt_exit_code(err)
        click.echo(f"Error: interrupted by {name}; {note}", err=True)
        raise SystemExit(code) from None
