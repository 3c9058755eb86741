"""What `kv` accepts and how it refuses the rest: keys as bytes or hex, numbers in the range their proto
field holds, timeouts that are positive, global flags anywhere on the line, and every failure, even an
unforeseen one, as one `Error: ...` line with a documented exit code.

Exit codes (README "Exit codes of kv"): 0 done, 1 the request failed, 2 the command line is wrong,
3 a write's outcome is unknown (it may or may not have been applied), 130 interrupted."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

EXIT_ERROR = 1
EXIT_BAD_USAGE = 2
EXIT_OUTCOME_UNKNOWN = 3
EXIT_INTERRUPTED = 130

UINT32 = click.IntRange(0, 2 ** 32 - 1)
UINT64 = click.IntRange(0, 2 ** 64 - 1)
NODE_ID = click.IntRange(1, 2 ** 64 - 1)


def fail(msg: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(code)


class Seconds(click.ParamType):
    """A duration in seconds that can be waited for: finite and above zero (0 would fail every call at
    once; a negative one is a typo)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(f) or f <= 0:
            self.fail(f"must be a positive number of seconds, not {value}", param, ctx)
        return f


SECONDS = Seconds()


def to_bytes(arg: str, hex_mode: bool, what: str) -> bytes:
    """A key, value or range end from the command line. Bytes that are not UTF-8 arrive from the shell as
    surrogates (PEP 383) and go back to the very bytes given; with --hex the argument is hex digits."""
    if hex_mode:
        try:
            return bytes.fromhex(arg)
        except ValueError:
            fail(f"{what} {arg!r} is not hex (--hex takes an even number of digits 0-9a-f)", EXIT_BAD_USAGE)
    return arg.encode("utf-8", "surrogateescape")


def show(b: bytes, hex_mode: bool) -> str:
    """How a key or value is printed: hex with --hex, else text (bytes that are not UTF-8 as \\xNN)."""
    return b.hex() if hex_mode else b.decode("utf-8", errors="backslashreplace")


GLOBAL_FLAGS_WITH_VALUE = frozenset({"--endpoints", "--dial-timeout", "--command-timeout", "-w", "-o", "--write-out",
                                     "--cacert", "--cert", "--key"})
GLOBAL_SWITCHES = frozenset({"--hex"})


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move global flags given after the command to the front, as etcdctl accepts them anywhere
    (`kv status -w table`, `kv get --hex 6b`). Nothing after `--` is touched."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_SWITCHES:
            front.append(arg)
        elif arg.split("=", 1)[0] in GLOBAL_FLAGS_WITH_VALUE:
            if "=" in arg or i + 1 == len(args):
                front.append(arg)
            else:
                front += [arg, args[i + 1]]
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


class KvGroup(click.Group):
    """The `kv` command group: global flags anywhere, and no failure that is not one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_flags(args))

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else "kv --help")
            sys.exit(0)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            fail(one_line(e.format_message()) + where, EXIT_BAD_USAGE)
        except click.ClickException as e:
            fail(one_line(e.format_message()), e.exit_code or EXIT_ERROR)
        except (click.exceptions.Abort, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_stdout()  # `kv range ... | head`: the reader has gone; nothing more to say
            sys.exit(EXIT_ERROR)
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - the promise: never a traceback
            fail(f"internal error: {type(e).__name__}: {one_line(str(e))}")
        sys.exit(rv if isinstance(rv, int) else 0)


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines) if lines else "error"


def _quiet_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
