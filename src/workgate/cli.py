"""The ``workgate`` command line: ``workgate run MODULE:ATTRIBUTE [options]``.

``main()`` returns the exit status instead of exiting, so tests and
``python -m workgate`` share one entry point:

- 0: ``--help``, ``--version``, or the dispatcher ran and shut down cleanly.
- 1: the dispatcher stopped with an operating system error, such as an
  address already in use.
- 2: invalid arguments or an application that cannot be loaded. The reason
  is printed as one line, ``workgate: error: ...``, on stderr. Only when the
  application module raises while it is imported does its traceback follow
  that line.
- 130: interrupted by Ctrl-C before the dispatcher took over the signals.

The Dispatcher class is imported only when an application is loaded, so the
command line itself starts fast. Tests replace :func:`_load_dispatcher_class`
to check loading without the core.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import ssl
import sys
import traceback
from typing import Any, NoReturn

from workgate import logs
from workgate.constants import (
    LOG_CRITICAL,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARNING,
)

__all__ = ['main', 'load_app', 'CLIError']

PROG = 'workgate'

LOG_LEVELS = {
    'debug': LOG_DEBUG,
    'info': LOG_INFO,
    'warning': LOG_WARNING,
    'error': LOG_ERROR,
    'critical': LOG_CRITICAL,
}

# Read when --keyfile-password is absent, so the password need not appear in
# the process list.
KEYFILE_PASSWORD_ENV = 'WORKGATE_KEYFILE_PASSWORD'

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A failure reported as one ``workgate: error:`` line with exit status 2.

    ``details`` is printed below that line when set (a traceback of the
    application's own code).
    """

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class _ArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors become CLIError instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _load_dispatcher_class() -> type:
    """Import and return ``workgate.dispatcher.Dispatcher``.

    Kept as a module function so tests can return a stand-in class.
    """
    from workgate.dispatcher import Dispatcher

    return Dispatcher


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version('workgate')
    except PackageNotFoundError:
        # Running from a source tree that was never installed.
        package = sys.modules.get('workgate')
        return str(getattr(package, '__version__', 'unknown'))


# ---------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description=(
            'Run an HTTP API server whose handlers run in pools of worker '
            'processes.'
        ),
    )
    parser.add_argument(
        '--version', action='version', version=f'%(prog)s {_version()}'
    )
    commands = parser.add_subparsers(
        dest='command', metavar='COMMAND', required=True
    )

    run = commands.add_parser(
        'run',
        help='load a Dispatcher from an application module and serve it',
        description=(
            'Load a Dispatcher from an application module and serve it until '
            'SIGTERM or SIGINT, then shut down gracefully. Options that are '
            'not given keep the values the application set.'
        ),
    )
    run.add_argument(
        'app',
        metavar='MODULE:ATTRIBUTE',
        help=(
            'the application: a module path such as myapp.server and, after '
            'the colon, the name of a Dispatcher instance or of a function '
            'that takes no arguments and returns one (dotted names allowed)'
        ),
    )
    run.add_argument(
        '--host',
        metavar='HOST',
        help='IP address or host name to listen on, e.g. 127.0.0.1 or ::',
    )
    run.add_argument(
        '--port',
        metavar='PORT',
        type=int,
        help='TCP port number to listen on, 0 to 65535 (0: any free port)',
    )
    # NOTE: Dispatcher.configure(num_workers=...) decides how this applies
    # to an application with several pools. The help text assumes every pool.
    run.add_argument(
        '--workers',
        metavar='N',
        type=int,
        help='number of worker processes in each pool (at least 1)',
    )
    run.add_argument(
        '--log-level',
        choices=list(LOG_LEVELS),
        help="minimum level of the dispatcher's log records",
    )
    run.add_argument(
        '--no-access-log',
        action='store_true',
        help='do not log one line per request',
    )
    run.add_argument(
        '--certfile',
        metavar='PATH',
        help='PEM file with the TLS certificate chain; enables HTTPS '
        '(requires --keyfile)',
    )
    run.add_argument(
        '--keyfile',
        metavar='PATH',
        help='PEM file with the private key of --certfile',
    )
    run.add_argument(
        '--keyfile-password',
        metavar='PASSWORD',
        help=(
            'password of an encrypted --keyfile; other local users can read '
            f'it in the process list, so prefer the {KEYFILE_PASSWORD_ENV} '
            'environment variable'
        ),
    )
    run.add_argument(
        '--app-dir',
        metavar='DIR',
        default='.',
        help=(
            'directory put first on the module search path before MODULE is '
            'imported (default: the current directory)'
        ),
    )
    return parser


def _check_run_args(args: argparse.Namespace) -> None:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CLIError(f'invalid --port {args.port}: expected 0 to 65535')
    if args.workers is not None and args.workers < 1:
        raise CLIError(f'invalid --workers {args.workers}: expected at least 1')
    if args.certfile and not args.keyfile:
        raise CLIError('--certfile requires --keyfile')
    if args.keyfile and not args.certfile:
        raise CLIError('--keyfile requires --certfile')
    if args.keyfile_password is not None and not args.keyfile:
        raise CLIError('--keyfile-password requires --keyfile')
    if not os.path.isdir(args.app_dir):
        raise CLIError(f'--app-dir {args.app_dir!r} is not a directory')


def build_ssl_context(
    certfile: str, keyfile: str, password: str | None
) -> ssl.SSLContext:
    """Return a server TLS context with the certificate chain loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except OSError as exc:
        # FileNotFoundError, PermissionError and ssl.SSLError are OSErrors.
        # The message names the files, never the password.
        reason = exc.strerror or str(exc)
        raise CLIError(
            f'cannot load TLS certificate {certfile!r} with key {keyfile!r}: '
            f'{reason}'
        ) from None
    return context


# ---------------------------------------------------------------------------
# Loading the application


def _split_app_spec(spec: str) -> tuple[str, str]:
    module_name, sep, attribute = spec.partition(':')
    if not (
        sep
        and _is_dotted_name(module_name)
        and _is_dotted_name(attribute)
    ):
        raise CLIError(
            f'invalid application {spec!r}: expected MODULE:ATTRIBUTE, '
            'e.g. myapp.server:dispatcher'
        )
    return module_name, attribute


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split('.'))


def _user_traceback(exc: BaseException) -> str:
    """Format ``exc`` without the frames of this module and of importlib."""
    tb = exc.__traceback__
    while tb is not None and _is_loader_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return ''.join(lines).rstrip('\n')


def _is_loader_frame(filename: str) -> bool:
    return filename == __file__ or filename.startswith('<frozen importlib')


def _raise_location(exc: BaseException) -> str:
    """Return ``file:line`` of the innermost frame of ``exc``'s traceback."""
    tb = exc.__traceback__
    if tb is None:
        return 'unknown location'
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f'{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}'


def _import_module(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ''
        if module_name == missing or module_name.startswith(missing + '.'):
            raise CLIError(
                f'module {module_name!r} not found; check the name and '
                '--app-dir'
            ) from None
        # The module exists but imports something that does not.
        raise CLIError(
            f'importing module {module_name!r} failed: '
            f'{type(exc).__name__}: {exc}',
            details=_user_traceback(exc),
        ) from None
    except Exception as exc:
        raise CLIError(
            f'importing module {module_name!r} failed: '
            f'{type(exc).__name__}: {exc}',
            details=_user_traceback(exc),
        ) from None


def _resolve_attribute(module: Any, spec: str, attribute: str) -> Any:
    value = module
    for depth, part in enumerate(attribute.split('.')):
        try:
            value = getattr(value, part)
        except AttributeError:
            owner = '.'.join([module.__name__, *attribute.split('.')[:depth]])
            raise CLIError(
                f'invalid application {spec!r}: {owner!r} has no attribute '
                f'{part!r}'
            ) from None
    return value


def _call_factory(factory: Any, spec: str) -> Any:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise CLIError(
            f'invalid application {spec!r}: the factory requires arguments; '
            'it must be callable with none'
        ) from None
    except ValueError:
        pass  # No signature available (some builtins): just call it.

    try:
        return factory()
    except Exception as exc:
        raise CLIError(
            f'application factory {spec!r} raised {type(exc).__name__}: {exc} '
            f'(at {_raise_location(exc)})'
        ) from None


def load_app(spec: str, app_dir: str = '.') -> Any:
    """Import ``MODULE:ATTRIBUTE`` and return the Dispatcher it names.

    ``app_dir`` goes first on ``sys.path``. The attribute may be a
    Dispatcher instance or a callable (a factory function or a Dispatcher
    subclass) that returns one when called with no arguments. Raises
    CLIError on every failure.
    """
    module_name, attribute = _split_app_spec(spec)
    sys.path.insert(0, os.path.abspath(app_dir))

    module = _import_module(module_name)
    target = _resolve_attribute(module, spec, attribute)

    dispatcher_class = _load_dispatcher_class()
    expected = f'{dispatcher_class.__module__}.{dispatcher_class.__qualname__}'
    if isinstance(target, dispatcher_class):
        return target
    if not callable(target):
        raise CLIError(
            f'invalid application {spec!r}: it is a {type(target).__name__}, '
            f'expected a {expected} instance or a factory that returns one'
        )

    dispatcher = _call_factory(target, spec)
    if not isinstance(dispatcher, dispatcher_class):
        raise CLIError(
            f'application factory {spec!r} returned a '
            f'{type(dispatcher).__name__}, expected a {expected} instance'
        )
    return dispatcher


# ---------------------------------------------------------------------------
# Commands


def run_command(args: argparse.Namespace) -> int:
    """Load the application, apply the options given and serve until shutdown."""
    _check_run_args(args)

    ssl_context = None
    if args.certfile:
        password = args.keyfile_password
        if password is None:
            password = os.environ.get(KEYFILE_PASSWORD_ENV)
        ssl_context = build_ssl_context(args.certfile, args.keyfile, password)

    log_level = LOG_LEVELS[args.log_level] if args.log_level else None
    logs.configure_logging(level=log_level if log_level is not None else LOG_INFO)

    dispatcher = load_app(args.app, args.app_dir)
    try:
        dispatcher.configure(
            address=args.host,
            port=args.port,
            num_workers=args.workers,
            ssl_context=ssl_context,
            log_level=log_level,
            access_log=False if args.no_access_log else None,
        )
    except ValueError as exc:
        raise CLIError(f'invalid option: {exc}') from None

    try:
        dispatcher.run()
    except OSError as exc:
        print(f'{PROG}: error: dispatcher stopped: {exc}', file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the ``workgate`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            # --help and --version print their text and exit with status 0.
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        return run_command(args)
    except CLIError as exc:
        print(f'{PROG}: error: {exc.message}', file=sys.stderr)
        if exc.details:
            print(exc.details, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
