"""structlog configuration: readable lines on a terminal, JSON lines otherwise (for log shippers).

Three kinds of lines reach a node's stderr: raftkv's own (structlog), Python libraries' (the stdlib
`logging` of grpc's Python layer, asyncio, ...), and gRPC core's, which absl writes straight to file
descriptor 2. The first two are rendered alike (JSON or console). gRPC core's cannot be rendered, so
with JSON logs they are silenced (GRPC_VERBOSITY=NONE) unless the operator set GRPC_VERBOSITY; that
must happen before grpc is imported, hence `grpc_core_verbosity`, called first thing by `raftkv serve`.
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence

import structlog

GRPC_CORE_JSON = "NONE"
"""gRPC core's verbosity when logs are JSON: its own lines are not, so none are written."""
GRPC_CORE_CONSOLE = "ERROR"


def _log_format(args: Sequence[str], environ: Mapping[str, str]) -> str:
    """The --log-format `raftkv serve` will use, as its flag > environment > TOML file precedence says."""
    fmt = config = None
    for i, a in enumerate(args):
        for flag in ("--log-format", "--config"):
            if a == flag and i + 1 < len(args):
                value: str | None = args[i + 1]
            elif a.startswith(flag + "="):
                value = a.split("=", 1)[1]
            else:
                continue
            if flag == "--log-format":
                fmt = value
            else:
                config = value
    fmt = fmt or environ.get("RAFTKV_SERVE_LOG_FORMAT")
    config = config or environ.get("RAFTKV_SERVE_CONFIG")
    if not fmt and config:
        try:
            with open(config, "rb") as f:
                raw = tomllib.load(f)
            fmt = raw.get("log_format") or raw.get("log-format")
        except (OSError, tomllib.TOMLDecodeError):
            pass  # the config parser reports it properly later
    return str(fmt or "auto")


def grpc_core_verbosity(args: Sequence[str], environ: Mapping[str, str], stderr_is_tty: bool) -> str | None:
    """What GRPC_VERBOSITY to set for `raftkv serve ARGS`, or None to leave it (the operator set it)."""
    if "GRPC_VERBOSITY" in environ:
        return None
    fmt = _log_format(args, environ)
    use_json = fmt == "json" or (fmt == "auto" and not stderr_is_tty)
    return GRPC_CORE_JSON if use_json else GRPC_CORE_CONSOLE


def quiet_grpc_core_for_serve(argv: Sequence[str]) -> None:
    """Called before grpc is imported (gRPC core reads GRPC_VERBOSITY once, at import)."""
    if "serve" not in argv[1:2] or "grpc" in sys.modules:
        return
    verbosity = grpc_core_verbosity(argv[2:], os.environ, sys.stderr.isatty())
    if verbosity is not None:
        os.environ["GRPC_VERBOSITY"] = verbosity


def configure_logging(fmt: str = "auto", level: str = "info", node_id: int | None = None) -> None:
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if node_id is not None:
        structlog.contextvars.bind_contextvars(node=node_id)
    if use_json:
        renderer: structlog.types.Processor = structlog.processors.JSONRenderer()
        processors += [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        processors += [renderer]
    _route_stdlib_logging(renderer, use_json, lvl)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _route_stdlib_logging(renderer: structlog.types.Processor, use_json: bool, level: int) -> None:
    """Python libraries log through `logging` (grpc's Python layer as `grpc._cython.cygrpc`, asyncio):
    render their records as raftkv's own lines, one per record, exception included, instead of the
    stdlib's plain text and multi-line tracebacks."""
    pre_chain: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[structlog.types.Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_json:
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=final, foreign_pre_chain=pre_chain))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))  # libraries' debug chatter stays out even at --log-level debug
