"""Unit tests for the workgate command line, with a stand-in Dispatcher.

The application modules are written to tmp_path. cli._load_dispatcher_class
is replaced so that loading and option handling are tested without starting
a server.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from workgate import cli
from workgate.constants import LOG_DEBUG, LOG_INFO

SRC_DIR = Path(cli.__file__).resolve().parents[1]
FAKE_MODULE = 'fake_workgate_core'


class FakeDispatcher:
    """Stand-in with the two methods the command line calls."""

    instances: list[FakeDispatcher] = []

    def __init__(self, label: str = 'default') -> None:
        self.label = label
        self.configure_calls: list[dict] = []
        self.run_calls = 0
        FakeDispatcher.instances.append(self)

    def configure(self, **options) -> None:
        self.configure_calls.append(options)

    def run(self) -> None:
        self.run_calls += 1


@pytest.fixture(autouse=True)
def fake_core(monkeypatch):
    """Serve FakeDispatcher as workgate's Dispatcher and keep imports isolated."""
    module = types.ModuleType(FAKE_MODULE)
    module.Dispatcher = FakeDispatcher
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    monkeypatch.setattr(cli, '_load_dispatcher_class', lambda: FakeDispatcher)

    FakeDispatcher.instances = []
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    yield
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def logging_levels(monkeypatch) -> list[int]:
    """Record the levels given to configure_logging() instead of installing it."""
    levels: list[int] = []

    def record(level=LOG_INFO, stream=None, fmt=None):
        levels.append(level)

    monkeypatch.setattr('workgate.logs.configure_logging', record)
    return levels


def write_module(directory: Path, name: str, source: str) -> Path:
    """Write module ``name`` (dotted names create packages) under directory."""
    parts = name.split('.')
    package_dir = directory
    for package in parts[:-1]:
        package_dir = package_dir / package
        package_dir.mkdir(exist_ok=True)
        (package_dir / '__init__.py').touch()
    path = package_dir / f'{parts[-1]}.py'
    path.write_text(textwrap.dedent(source))
    return path


APP_SOURCE = f"""
from {FAKE_MODULE} import Dispatcher

dispatcher = Dispatcher('instance')

def create():
    return Dispatcher('factory')

class Holder:
    inner = Dispatcher('nested')

class Custom(Dispatcher):
    pass

number = 42

def wrong_type():
    return 'not a dispatcher'

def broken_factory():
    raise RuntimeError('database unreachable')

def needs_args(config):
    return Dispatcher(config)
"""


@pytest.fixture
def app_dir(tmp_path) -> Path:
    write_module(tmp_path, 'app', APP_SOURCE)
    return tmp_path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('workgate: error: '), err
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------------------
# Help and version


def test_help_lists_run(capsys):
    code, out, _ = run_main(['--help'], capsys)
    assert code == 0
    assert 'usage: workgate' in out
    assert 'run' in out


def test_run_help_mentions_units(capsys):
    code, out, _ = run_main(['run', '--help'], capsys)
    text = ' '.join(out.split())
    assert code == 0
    assert 'MODULE:ATTRIBUTE' in text
    assert 'TCP port number to listen on, 0 to 65535' in text
    assert 'number of worker processes in each pool' in text
    assert 'PEM file' in text
    assert 'IP address or host name' in text
    assert '{debug,info,warning,error,critical}' in text
    assert 'WORKGATE_KEYFILE_PASSWORD' in text
    assert '(default: the current directory)' in text


def test_version(capsys):
    code, out, _ = run_main(['--version'], capsys)
    assert code == 0
    assert out.startswith('workgate ')
    assert len(out.split()) == 2


# ---------------------------------------------------------------------------
# Argument errors


def test_missing_command(capsys):
    code, _, err = run_main([], capsys)
    assert code == 2
    assert_one_error_line(err, 'COMMAND', "see 'workgate --help'")


def test_missing_app(capsys):
    code, _, err = run_main(['run'], capsys)
    assert code == 2
    assert_one_error_line(err, 'MODULE:ATTRIBUTE', "see 'workgate run --help'")


def test_unknown_option(capsys):
    code, _, err = run_main(['run', 'app:dispatcher', '--bogus'], capsys)
    assert code == 2
    assert_one_error_line(err, '--bogus')


def test_port_not_a_number(capsys):
    code, _, err = run_main(['run', 'app:dispatcher', '--port', 'http'], capsys)
    assert code == 2
    assert_one_error_line(err, '--port', "'http'")


def test_bad_log_level(capsys):
    code, _, err = run_main(['run', 'app:dispatcher', '--log-level', 'loud'], capsys)
    assert code == 2
    assert_one_error_line(err, '--log-level', 'loud')


@pytest.mark.parametrize(
    'args, fragment',
    [
        (['--port', '65536'], 'invalid --port 65536: expected 0 to 65535'),
        (['--port', '-1'], 'invalid --port -1: expected 0 to 65535'),
        (['--workers', '0'], 'invalid --workers 0: expected at least 1'),
        (['--certfile', 'c.pem'], '--certfile requires --keyfile'),
        (['--keyfile', 'k.pem'], '--keyfile requires --certfile'),
        (['--keyfile-password', 'pw'], '--keyfile-password requires --keyfile'),
        (['--app-dir', '/nonexistent/dir'], "--app-dir '/nonexistent/dir' is not"),
    ],
)
def test_invalid_option_values(capsys, monkeypatch, args, fragment):
    def fail():
        raise AssertionError('application loaded despite invalid options')

    monkeypatch.setattr(cli, '_load_dispatcher_class', fail)
    code, _, err = run_main(['run', 'app:dispatcher', *args], capsys)
    assert code == 2
    assert_one_error_line(err, fragment)


def test_keyfile_password_not_printed(capsys):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--keyfile-password', 's3cret'], capsys
    )
    assert code == 2
    assert 's3cret' not in err


# ---------------------------------------------------------------------------
# Loading errors


@pytest.mark.parametrize(
    'spec',
    ['app', 'app:', ':dispatcher', 'my-app:dispatcher', 'app:dis-patcher',
     'app..x:d', 'app:a..b', 'app:d:e'],
)
def test_bad_app_syntax(capsys, app_dir, spec):
    code, _, err = run_main(['run', spec, '--app-dir', str(app_dir)], capsys)
    assert code == 2
    assert_one_error_line(err, f'invalid application {spec!r}', 'MODULE:ATTRIBUTE')


def test_module_not_found(capsys, tmp_path):
    code, _, err = run_main(['run', 'nosuchapp:d', '--app-dir', str(tmp_path)], capsys)
    assert code == 2
    assert_one_error_line(err, "module 'nosuchapp' not found", '--app-dir')


def test_submodule_not_found(capsys, tmp_path):
    write_module(tmp_path, 'pkg.present', 'x = 1\n')
    code, _, err = run_main(
        ['run', 'pkg.absent:d', '--app-dir', str(tmp_path)], capsys
    )
    assert code == 2
    assert_one_error_line(err, "module 'pkg.absent' not found")


def test_import_error_shows_user_traceback(capsys, tmp_path):
    source = 'x = 1\nraise ValueError("bad setting")\n'
    path = write_module(tmp_path, 'crashing', source)
    code, _, err = run_main(['run', 'crashing:d', '--app-dir', str(tmp_path)], capsys)

    first, *rest = err.splitlines()
    assert code == 2
    assert first == (
        "workgate: error: importing module 'crashing' failed: "
        'ValueError: bad setting'
    )
    traceback_text = '\n'.join(rest)
    assert rest[0] == 'Traceback (most recent call last):'
    assert f'File "{path}", line 2' in traceback_text
    assert 'cli.py' not in traceback_text
    assert rest[-1] == 'ValueError: bad setting'


def test_missing_dependency_is_import_failure(capsys, tmp_path):
    write_module(tmp_path, 'needsdep', 'import no_such_dependency_xyz\n')
    code, _, err = run_main(['run', 'needsdep:d', '--app-dir', str(tmp_path)], capsys)

    first = err.splitlines()[0]
    assert code == 2
    assert first.startswith("workgate: error: importing module 'needsdep' failed: ")
    assert "No module named 'no_such_dependency_xyz'" in first
    assert 'needsdep.py' in err


def test_syntax_error_in_module(capsys, tmp_path):
    write_module(tmp_path, 'badsyntax', 'def broken(:\n')
    code, _, err = run_main(['run', 'badsyntax:d', '--app-dir', str(tmp_path)], capsys)

    first = err.splitlines()[0]
    assert code == 2
    assert first.startswith("workgate: error: importing module 'badsyntax' failed: ")
    assert 'SyntaxError' in first
    assert 'badsyntax.py' in err


def test_missing_attribute(capsys, app_dir):
    code, _, err = run_main(['run', 'app:nothing', '--app-dir', str(app_dir)], capsys)
    assert code == 2
    assert_one_error_line(err, "'app' has no attribute 'nothing'")


def test_missing_nested_attribute(capsys, app_dir):
    code, _, err = run_main(
        ['run', 'app:Holder.absent', '--app-dir', str(app_dir)], capsys
    )
    assert code == 2
    assert_one_error_line(err, "'app.Holder' has no attribute 'absent'")


def test_attribute_wrong_type(capsys, app_dir):
    code, _, err = run_main(['run', 'app:number', '--app-dir', str(app_dir)], capsys)
    assert code == 2
    assert_one_error_line(
        err,
        "invalid application 'app:number': it is a int",
        'FakeDispatcher instance or a factory',
    )


def test_factory_returns_wrong_type(capsys, app_dir):
    code, _, err = run_main(
        ['run', 'app:wrong_type', '--app-dir', str(app_dir)], capsys
    )
    assert code == 2
    assert_one_error_line(
        err, "application factory 'app:wrong_type' returned a str, expected a"
    )


def test_factory_raises(capsys, app_dir):
    code, _, err = run_main(
        ['run', 'app:broken_factory', '--app-dir', str(app_dir)], capsys
    )
    assert code == 2
    assert_one_error_line(
        err,
        "application factory 'app:broken_factory' raised RuntimeError: "
        'database unreachable',
        f'(at {app_dir / "app.py"}:',
    )


def test_factory_requires_arguments(capsys, app_dir):
    code, _, err = run_main(
        ['run', 'app:needs_args', '--app-dir', str(app_dir)], capsys
    )
    assert code == 2
    assert_one_error_line(err, 'the factory requires arguments')


def test_missing_certfile(capsys, app_dir):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--certfile', str(app_dir / 'no.pem'),
         '--keyfile', str(app_dir / 'no.key')],
        capsys,
    )
    assert code == 2
    assert_one_error_line(err, 'cannot load TLS certificate', 'no.pem', 'No such file')


def test_invalid_certfile(capsys, app_dir):
    cert = app_dir / 'garbage.pem'
    cert.write_text('not a certificate\n')
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--certfile', str(cert), '--keyfile', str(cert)],
        capsys,
    )
    assert code == 2
    assert_one_error_line(err, 'cannot load TLS certificate', 'garbage.pem')


def test_configure_value_error(capsys, app_dir, monkeypatch):
    def reject(self, **options):
        raise ValueError('address is not valid')

    monkeypatch.setattr(FakeDispatcher, 'configure', reject)
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir)], capsys
    )
    assert code == 2
    assert_one_error_line(err, 'invalid option: address is not valid')


def test_run_os_error_exits_1(capsys, app_dir, monkeypatch):
    def fail(self):
        raise OSError(98, 'Address already in use')

    monkeypatch.setattr(FakeDispatcher, 'run', fail)
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir)], capsys
    )
    assert code == 1
    assert_one_error_line(err, 'dispatcher stopped', 'Address already in use')


# ---------------------------------------------------------------------------
# Loading and running


def loaded() -> FakeDispatcher:
    """Return the one FakeDispatcher whose run() was called."""
    ran = [d for d in FakeDispatcher.instances if d.run_calls]
    assert len(ran) == 1
    assert ran[0].run_calls == 1
    return ran[0]


ALL_NONE = {
    'address': None,
    'port': None,
    'num_workers': None,
    'ssl_context': None,
    'log_level': None,
    'access_log': None,
}


@pytest.mark.parametrize(
    'attribute, label',
    [
        ('dispatcher', 'instance'),
        ('create', 'factory'),
        ('Holder.inner', 'nested'),
        ('Custom', 'default'),
    ],
)
def test_load_kinds_of_attribute(capsys, app_dir, attribute, label):
    code, _, err = run_main(
        ['run', f'app:{attribute}', '--app-dir', str(app_dir)], capsys
    )
    assert code == 0, err
    assert err == ''
    assert loaded().label == label


def test_dotted_module(capsys, tmp_path):
    write_module(tmp_path, 'pkg.sub.server', APP_SOURCE)
    code, _, err = run_main(
        ['run', 'pkg.sub.server:dispatcher', '--app-dir', str(tmp_path)], capsys
    )
    assert code == 0, err
    assert loaded().label == 'instance'


def test_app_dir_first_on_sys_path(capsys, app_dir):
    code, _, _ = run_main(['run', 'app:dispatcher', '--app-dir', str(app_dir)], capsys)
    assert code == 0
    assert sys.path[0] == str(app_dir)


def test_app_dir_defaults_to_cwd(capsys, app_dir, monkeypatch):
    monkeypatch.chdir(app_dir)
    code, _, err = run_main(['run', 'app:dispatcher'], capsys)
    assert code == 0, err
    assert sys.path[0] == str(app_dir)


def test_no_options_pass_none(capsys, app_dir, logging_levels):
    code, _, _ = run_main(['run', 'app:dispatcher', '--app-dir', str(app_dir)], capsys)
    assert code == 0
    assert loaded().configure_calls == [ALL_NONE]
    assert logging_levels == [LOG_INFO]


def test_options_passed_to_configure(capsys, app_dir, logging_levels):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir),
         '--host', '127.0.0.1', '--port', '8123', '--workers', '3',
         '--log-level', 'debug', '--no-access-log'],
        capsys,
    )
    assert code == 0, err
    assert loaded().configure_calls == [
        {
            **ALL_NONE,
            'address': '127.0.0.1',
            'port': 8123,
            'num_workers': 3,
            'log_level': LOG_DEBUG,
            'access_log': False,
        }
    ]
    assert logging_levels == [LOG_DEBUG]


@pytest.mark.parametrize('name, level', list(cli.LOG_LEVELS.items()))
def test_log_level_names(capsys, app_dir, name, level):
    code, _, _ = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir), '--log-level', name],
        capsys,
    )
    assert code == 0
    assert loaded().configure_calls[0]['log_level'] == level


def test_port_zero_allowed(capsys, app_dir):
    code, _, _ = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir), '--port', '0'], capsys
    )
    assert code == 0
    assert loaded().configure_calls[0]['port'] == 0


def test_keyboard_interrupt_exits_130(capsys, app_dir, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeDispatcher, 'run', interrupted)
    code, _, _ = run_main(['run', 'app:dispatcher', '--app-dir', str(app_dir)], capsys)
    assert code == 130


# ---------------------------------------------------------------------------
# TLS


@pytest.fixture(scope='module')
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """Self-signed certificate with a plain and a password-protected key."""
    if shutil.which('openssl') is None:
        pytest.skip('openssl command not available to create a test certificate')
    directory = tmp_path_factory.mktemp('tls')
    cert = directory / 'cert.pem'
    key = directory / 'key.pem'
    encrypted_key = directory / 'key-encrypted.pem'
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
         '-subj', '/CN=localhost', '-keyout', str(key), '-out', str(cert)],
        check=True, capture_output=True,
    )
    subprocess.run(
        ['openssl', 'pkey', '-in', str(key), '-aes256', '-passout', 'pass:opensesame',
         '-out', str(encrypted_key)],
        check=True, capture_output=True,
    )
    return {'cert': cert, 'key': key, 'encrypted_key': encrypted_key}


def test_tls_context_passed(capsys, app_dir, tls_files):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir),
         '--certfile', str(tls_files['cert']), '--keyfile', str(tls_files['key'])],
        capsys,
    )
    assert code == 0, err
    context = loaded().configure_calls[0]['ssl_context']
    assert isinstance(context, ssl.SSLContext)
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_tls_encrypted_key_password(capsys, app_dir, tls_files):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir),
         '--certfile', str(tls_files['cert']),
         '--keyfile', str(tls_files['encrypted_key']),
         '--keyfile-password', 'opensesame'],
        capsys,
    )
    assert code == 0, err
    assert isinstance(loaded().configure_calls[0]['ssl_context'], ssl.SSLContext)


def test_tls_password_from_environment(capsys, app_dir, tls_files, monkeypatch):
    monkeypatch.setenv(cli.KEYFILE_PASSWORD_ENV, 'opensesame')
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir),
         '--certfile', str(tls_files['cert']),
         '--keyfile', str(tls_files['encrypted_key'])],
        capsys,
    )
    assert code == 0, err


def test_tls_wrong_password(capsys, app_dir, tls_files):
    code, _, err = run_main(
        ['run', 'app:dispatcher', '--app-dir', str(app_dir),
         '--certfile', str(tls_files['cert']),
         '--keyfile', str(tls_files['encrypted_key']),
         '--keyfile-password', 'wrong-guess'],
        capsys,
    )
    assert code == 2
    assert_one_error_line(err, 'cannot load TLS certificate')
    assert 'wrong-guess' not in err


# ---------------------------------------------------------------------------
# python -m workgate


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(SRC_DIR), env.get('PYTHONPATH')])
    )
    return subprocess.run(
        [sys.executable, '-m', 'workgate', *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
    )


def test_python_m_version(tmp_path):
    result = run_module('--version', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('workgate ')


def test_python_m_error_exit_code(tmp_path):
    result = run_module('run', 'nosuchapp:d', cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "workgate: error: module 'nosuchapp' not found; check the name and "
        '--app-dir\n'
    )
