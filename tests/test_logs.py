"""Unit tests for workgate.logs: Logger, output formats, RateLimiter, access lines."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from workgate import logs
from workgate.constants import (
    LOG_CRITICAL,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARNING,
)
from workgate.logs import (
    ACCESS_LOGGER_NAME,
    Logger,
    RateLimiter,
    configure_logging,
    dispatcher_level,
    emit,
    format_access,
)

TIMESTAMP = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}'


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, int, str]] = []

    def __call__(self, name: str, level: int, message: str) -> None:
        self.records.append((name, level, message))

    @property
    def messages(self) -> list[str]:
        return [message for _, _, message in self.records]


class ListQueue:
    def __init__(self) -> None:
        self.items: list[tuple] = []

    def put(self, item: tuple) -> None:
        self.items.append(item)


class CountingStream(io.StringIO):
    """StringIO that counts write() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture(autouse=True)
def restore_logging():
    """Undo configure_logging() after each test."""
    logger = logging.getLogger('workgate')
    handlers = list(logger.handlers)
    level = logger.level
    propagate = logger.propagate
    installed = logs._installed_handler
    stored_level = logs._dispatcher_level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    logs._installed_handler = installed
    logs._dispatcher_level = stored_level


@pytest.fixture
def no_env_format(monkeypatch):
    monkeypatch.delenv('JOURNAL_STREAM', raising=False)
    monkeypatch.delenv('NO_COLOR', raising=False)


# ---------------------------------------------------------------------------
# Logger: formatting


def test_logger_percent_style():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info('item %d of %s', 3, 'x')
    assert sink.messages == ['item 3 of x']


def test_logger_brace_style():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info('user {id} {name!r}', id=7, name='a')
    assert sink.messages == ["user 7 'a'"]


def test_logger_percent_then_brace():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info('%s took {ms} ms', 'GET', ms=12)
    assert sink.messages == ['GET took 12 ms']


def test_logger_single_mapping_argument():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info('%(a)s-%(b)s', {'a': 1, 'b': 2})
    assert sink.messages == ['1-2']


def test_logger_without_args_keeps_markers():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info('100% of {x}')
    assert sink.messages == ['100% of {x}']


def test_logger_non_string_message():
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).info({'k': 1})
    assert sink.messages == ["{'k': 1}"]


@pytest.mark.parametrize(
    'msg, args, kwargs, error',
    [
        ('%d items', ('many',), {}, 'TypeError'),
        ('%s %s', ('one',), {}, 'TypeError'),
        ('no markers', (1,), {}, 'TypeError'),
        ('{missing}', (), {'other': 1}, 'KeyError'),
        ('{0}', (), {'k': 1}, 'IndexError'),
        ('{x:d}', (), {'x': 'text'}, 'ValueError'),
        ('{x.attr}', (), {'x': 1}, 'AttributeError'),
    ],
)
def test_logger_format_failure_falls_back(msg, args, kwargs, error):
    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).warning(msg, *args, **kwargs)

    [message] = sink.messages
    assert message.startswith(msg + ' [log formatting failed, ')
    assert error in message
    assert f'args={args!r}' in message
    assert f'kwargs={kwargs!r}' in message


def test_logger_failing_str_does_not_raise():
    class Broken:
        def __str__(self):
            raise RuntimeError('no str')

        def __repr__(self):
            raise RuntimeError('no repr')

    sink = Sink()
    Logger('W', level=LOG_DEBUG, sink=sink).error('value %s', Broken())

    [message] = sink.messages
    assert message.startswith('value %s [log formatting failed, RuntimeError')
    assert 'repr() failed' in message


# ---------------------------------------------------------------------------
# Logger: levels and destinations


def test_logger_level_filtering():
    sink = Sink()
    log = Logger('W', level=LOG_WARNING, sink=sink)

    log.debug('d')
    log.info('i')
    log.warning('w')
    log.error('e')
    log.critical('c')

    assert sink.records == [
        ('W', LOG_WARNING, 'w'),
        ('W', LOG_ERROR, 'e'),
        ('W', LOG_CRITICAL, 'c'),
    ]


def test_logger_filtered_record_not_formatted():
    class Expensive:
        def __str__(self):
            raise AssertionError('formatted a record below the level')

    sink = Sink()
    Logger('W', level=LOG_ERROR, sink=sink).info('%s', Expensive())
    assert sink.records == []


def test_logger_default_level_is_warning():
    sink = Sink()
    log = Logger('W', sink=sink)
    log.info('i')
    log.warning('w')
    assert log.level == LOG_WARNING
    assert sink.messages == ['w']


@pytest.mark.parametrize(
    'level, expected',
    [
        (LOG_DEBUG, (True, True, True, True)),
        (LOG_INFO, (False, True, True, True)),
        (LOG_WARNING, (False, False, True, True)),
        (LOG_ERROR, (False, False, False, True)),
        (LOG_CRITICAL, (False, False, False, False)),
    ],
)
def test_logger_is_level_properties(level, expected):
    log = Logger('W', level=level, sink=Sink())
    assert (log.is_debug, log.is_info, log.is_warning, log.is_error) == expected


def test_logger_name_and_level_mutable():
    sink = Sink()
    log = Logger('before', level=LOG_ERROR, sink=sink)
    log.name = 'after'
    log.level = LOG_DEBUG
    log.debug('x')
    assert sink.records == [('after', LOG_DEBUG, 'x')]


def test_logger_queue_tuple():
    queue = ListQueue()
    Logger('MyWorker[2]', queue=queue, level=LOG_INFO).info('n=%d', 5)
    assert queue.items == [('LOG', 'MyWorker[2]', LOG_INFO, 'n=5')]


def test_logger_sink_preferred_over_queue():
    queue = ListQueue()
    sink = Sink()
    Logger('W', queue=queue, level=LOG_INFO, sink=sink).info('x')
    assert sink.records == [('W', LOG_INFO, 'x')]
    assert queue.items == []


def test_logger_without_destination_emits(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='plain')
    Logger('Lonely', level=LOG_INFO).info('hello')
    assert stream.getvalue().endswith('INFO     Lonely hello\n')


def test_logger_exception_appends_traceback():
    sink = Sink()
    log = Logger('W', level=LOG_INFO, sink=sink)
    try:
        raise ValueError('bad value')
    except ValueError:
        log.exception('handler %s failed', 'x')

    [(name, level, message)] = sink.records
    assert level == LOG_ERROR
    first, rest = message.split('\n', 1)
    assert first == 'handler x failed'
    assert rest.startswith('Traceback (most recent call last):')
    assert rest.endswith('ValueError: bad value')


def test_logger_exception_outside_except():
    sink = Sink()
    Logger('W', level=LOG_INFO, sink=sink).exception('no error here')
    assert sink.records == [('W', LOG_ERROR, 'no error here')]


def test_logger_exception_respects_level():
    sink = Sink()
    log = Logger('W', level=LOG_CRITICAL, sink=sink)
    try:
        raise ValueError('x')
    except ValueError:
        log.exception('dropped')
    assert sink.records == []


# ---------------------------------------------------------------------------
# Output formats


def test_plain_line_shape(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='plain')
    emit('MyWorker[0]', LOG_WARNING, 'disk at 91%')

    line = stream.getvalue()
    assert re.fullmatch(TIMESTAMP + r' WARNING  MyWorker\[0\] disk at 91%\n', line)


def test_color_line_shape(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='color')
    emit('MyWorker[0]', LOG_ERROR, 'failed')
    emit('MyWorker[0]', LOG_INFO, 'fine')

    error_line, info_line = stream.getvalue().splitlines()
    assert re.fullmatch(
        r'\x1b\[31m' + TIMESTAMP + r' ERROR    MyWorker\[0\] failed\x1b\[0m',
        error_line,
    )
    assert re.fullmatch(TIMESTAMP + r' INFO     MyWorker\[0\] fine', info_line)


@pytest.mark.parametrize(
    'level, code',
    [
        (LOG_CRITICAL, '\x1b[1;31m'),
        (LOG_ERROR, '\x1b[31m'),
        (LOG_WARNING, '\x1b[33m'),
        (LOG_DEBUG, '\x1b[2m'),
    ],
)
def test_color_codes_by_level(no_env_format, level, code):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='color')
    emit('W', level, 'm')
    output = stream.getvalue()
    assert output.startswith(code)
    assert output.endswith('\x1b[0m\n')


@pytest.mark.parametrize(
    'level, priority',
    [
        (LOG_CRITICAL, 2),
        (LOG_ERROR, 3),
        (LOG_WARNING, 4),
        (LOG_INFO, 6),
        (LOG_DEBUG, 7),
        (35, 4),
        (5, 7),
    ],
)
def test_journal_line_shape(no_env_format, level, priority):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='journal')
    emit('Api', level, 'hello')

    level_name = logging.getLevelName(level)
    assert stream.getvalue() == f'<{priority}>{level_name:<8} Api hello\n'


def test_journal_prefixes_every_line(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='journal')
    emit('Api', LOG_ERROR, 'failed\nTraceback (most recent call last):\nValueError')

    assert stream.getvalue() == (
        '<3>ERROR    Api failed\n'
        '<3>Traceback (most recent call last):\n'
        '<3>ValueError\n'
    )


def test_emit_one_write_per_record(no_env_format):
    stream = CountingStream()
    configure_logging(stream=stream, fmt='plain')
    emit('W', LOG_ERROR, 'first line\nsecond line\nthird line')

    assert stream.writes == 1
    assert stream.getvalue().count('\n') == 3


def test_emit_keeps_percent_and_braces(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='journal')
    emit('W', LOG_INFO, '50%s {x} %(y)d')
    assert stream.getvalue() == '<6>INFO     W 50%s {x} %(y)d\n'


def test_emit_passes_debug_records(no_env_format):
    stream = io.StringIO()
    configure_logging(level=LOG_ERROR, stream=stream, fmt='journal')
    emit('W', LOG_DEBUG, 'asked for by the pool')
    assert stream.getvalue() == '<7>DEBUG    W asked for by the pool\n'


def test_emit_ignores_standard_logger_level(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='journal')
    logging.getLogger('workgate').setLevel(logging.CRITICAL)
    emit('W', LOG_INFO, 'still printed')
    assert stream.getvalue() == '<6>INFO     W still printed\n'


def test_emit_uses_workgate_child_logger(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='plain')
    seen = []
    child = logging.getLogger('workgate.MyWorker[3]')

    def remember(record):
        seen.append(record.name)
        return True

    child.addFilter(remember)
    try:
        emit('MyWorker[3]', LOG_INFO, 'x')
    finally:
        child.removeFilter(remember)
    assert seen == ['workgate.MyWorker[3]']


def test_access_logger_name_shortened(no_env_format):
    stream = io.StringIO()
    configure_logging(stream=stream, fmt='journal')
    logging.getLogger(ACCESS_LOGGER_NAME).info('line')
    assert stream.getvalue() == '<6>INFO     access line\n'


def test_stdlib_exception_in_one_record(no_env_format):
    stream = CountingStream()
    configure_logging(stream=stream, fmt='plain')
    try:
        raise KeyError('k')
    except KeyError:
        logging.getLogger('workgate.core').exception('lookup failed')

    assert stream.writes == 1
    output = stream.getvalue()
    assert re.match(TIMESTAMP + r' ERROR    core lookup failed\nTraceback', output)
    assert output.endswith("KeyError: 'k'\n")


# ---------------------------------------------------------------------------
# configure_logging


def test_configure_logging_replaces_own_handler(no_env_format):
    logger = logging.getLogger('workgate')
    foreign = logging.NullHandler()
    logger.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()

    configure_logging(stream=first, fmt='plain')
    configure_logging(stream=second, fmt='plain')
    emit('W', LOG_INFO, 'once')

    assert first.getvalue() == ''
    assert second.getvalue().count('once') == 1
    assert foreign in logger.handlers
    assert len(logger.handlers) == 2


def test_configure_logging_logger_settings(no_env_format):
    configure_logging(level=LOG_WARNING, stream=io.StringIO(), fmt='plain')
    logger = logging.getLogger('workgate')
    assert logger.level == logging.DEBUG
    assert logger.propagate is False


def test_configure_logging_stores_dispatcher_level(no_env_format):
    configure_logging(level=LOG_DEBUG, stream=io.StringIO(), fmt='plain')
    assert dispatcher_level() == LOG_DEBUG
    configure_logging(level=LOG_ERROR, stream=io.StringIO(), fmt='plain')
    assert dispatcher_level() == LOG_ERROR


def test_configure_logging_rejects_unknown_format():
    with pytest.raises(ValueError, match="invalid log format 'json'"):
        configure_logging(stream=io.StringIO(), fmt='json')


def test_configure_logging_defaults_to_stderr(no_env_format, capsys):
    configure_logging(fmt='journal')
    emit('W', LOG_WARNING, 'to stderr')
    assert capsys.readouterr().err == '<4>WARNING  W to stderr\n'


# ---------------------------------------------------------------------------
# Format detection


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _journal_stream_value(path) -> str:
    st = os.stat(path)
    return f'{st.st_dev}:{st.st_ino}'


def test_detect_plain_for_pipe_or_file(no_env_format):
    assert logs.detect_format(io.StringIO()) == 'plain'


def test_detect_color_on_tty(no_env_format):
    assert logs.detect_format(FakeTTY()) == 'color'


def test_detect_no_color_env(no_env_format, monkeypatch):
    monkeypatch.setenv('NO_COLOR', '1')
    assert logs.detect_format(FakeTTY()) == 'plain'


def test_detect_journal_matching_stream(no_env_format, monkeypatch, tmp_path):
    path = tmp_path / 'journal'
    with open(path, 'w') as stream:
        monkeypatch.setenv('JOURNAL_STREAM', _journal_stream_value(path))
        assert logs.detect_format(stream) == 'journal'


def test_detect_journal_other_stream(no_env_format, monkeypatch, tmp_path):
    journal = tmp_path / 'journal'
    journal.write_text('')
    with open(tmp_path / 'redirected', 'w') as stream:
        monkeypatch.setenv('JOURNAL_STREAM', _journal_stream_value(journal))
        assert logs.detect_format(stream) == 'plain'


@pytest.mark.parametrize('value', ['', 'garbage', '1:x', ':'])
def test_detect_journal_malformed(no_env_format, monkeypatch, tmp_path, value):
    with open(tmp_path / 'out', 'w') as stream:
        monkeypatch.setenv('JOURNAL_STREAM', value)
        assert logs.detect_format(stream) == 'plain'


def test_detect_journal_without_fileno(no_env_format, monkeypatch):
    monkeypatch.setenv('JOURNAL_STREAM', '1:2')
    assert logs.detect_format(io.StringIO()) == 'plain'


def test_configure_logging_detects_journal(no_env_format, monkeypatch, tmp_path):
    path = tmp_path / 'journal'
    with open(path, 'w') as stream:
        monkeypatch.setenv('JOURNAL_STREAM', _journal_stream_value(path))
        configure_logging(stream=stream)
        emit('W', LOG_ERROR, 'to journald')
    assert path.read_text() == '<3>ERROR    W to journald\n'


def test_configure_logging_detects_tty(no_env_format):
    stream = FakeTTY()
    configure_logging(stream=stream)
    emit('W', LOG_WARNING, 'x')
    assert stream.getvalue().startswith('\x1b[33m')


def test_forced_format_beats_environment(no_env_format):
    stream = FakeTTY()
    configure_logging(stream=stream, fmt='plain')
    emit('W', LOG_WARNING, 'x')
    assert '\x1b[' not in stream.getvalue()


# ---------------------------------------------------------------------------
# RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_first_call_allowed():
    limiter = RateLimiter(10.0, clock=FakeClock())
    assert limiter.check('k') == (True, 0)


def test_rate_limiter_counts_suppressed():
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock)

    assert limiter.check('k') == (True, 0)
    clock.now += 1
    assert limiter.check('k') == (False, 0)
    clock.now += 1
    assert limiter.check('k') == (False, 0)
    clock.now += 7.9
    assert limiter.check('k') == (False, 0)

    clock.now += 0.1  # exactly one interval after the allowed call
    assert limiter.check('k') == (True, 3)
    assert limiter.check('k') == (False, 0)


def test_rate_limiter_count_resets_after_report():
    clock = FakeClock()
    limiter = RateLimiter(5.0, clock=clock)
    limiter.check('k')
    limiter.check('k')
    clock.now += 5
    assert limiter.check('k') == (True, 1)
    clock.now += 5
    assert limiter.check('k') == (True, 0)


def test_rate_limiter_keys_independent():
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock)
    assert limiter.check('a') == (True, 0)
    assert limiter.check('b') == (True, 0)
    assert limiter.check('a') == (False, 0)
    assert limiter.check(('pool', 'X')) == (True, 0)


def test_rate_limiter_caps_keys():
    clock = FakeClock()
    limiter = RateLimiter(10.0, max_keys=3, clock=clock)
    for key in 'abcde':
        limiter.check(key)
    assert len(limiter) == 3
    # 'a' was forgotten, so it is allowed again at once.
    assert limiter.check('a') == (True, 0)
    # 'e' is still remembered.
    assert limiter.check('e') == (False, 0)


def test_rate_limiter_cap_drops_least_recently_seen():
    clock = FakeClock()
    limiter = RateLimiter(10.0, max_keys=2, clock=clock)
    limiter.check('a')
    limiter.check('b')
    limiter.check('a')  # suppressed, but makes 'a' the most recently seen
    limiter.check('c')  # over the cap: 'b' goes
    assert limiter.check('a') == (False, 0)
    assert limiter.check('b') == (True, 0)


def test_rate_limiter_forgets_stale_keys():
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock)
    limiter.check('old')
    clock.now += 10 * 1.0
    limiter.check('new')
    assert len(limiter) == 1


def test_rate_limiter_uses_monotonic_by_default():
    limiter = RateLimiter(10.0)
    assert limiter._clock is logs.time.monotonic


@pytest.mark.parametrize('kwargs', [{'interval': -1}, {'max_keys': 0}])
def test_rate_limiter_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


# ---------------------------------------------------------------------------
# Access lines


def test_access_line_shape():
    line = format_access(
        '127.0.0.1:5555', 'GET', '/api/x', 200, 0.001234, 'ComputeWorker', 1
    )
    assert line == '127.0.0.1:5555 "GET /api/x" 200 1.234ms pool=ComputeWorker worker=1'


def test_access_line_missing_values():
    line = format_access(None, 'GET', '/static/a.css', 304, None, None, None)
    assert line == '- "GET /static/a.css" 304 - pool=- worker=-'


def test_access_line_worker_zero():
    line = format_access('[::1]:80', 'POST', '/x', 201, 0.5, 'P', 0)
    assert line == '[::1]:80 "POST /x" 201 500.000ms pool=P worker=0'


def test_access_line_drops_query_string():
    line = format_access('h:1', 'GET', '/login?token=secret', 200, 0.0, 'P', 1)
    assert 'secret' not in line
    assert '"GET /login"' in line


def test_access_line_escapes_controls_and_quotes():
    path = '/a"b\\c\n1.2.3.4 fake\x1b[31m'
    line = format_access('h:1', 'GET', path, 400, 0.0, None, None)
    assert '\n' not in line
    assert '\x1b' not in line
    assert '"GET /a\\"b\\\\c\\x0a1.2.3.4 fake\\x1b[31m"' in line
