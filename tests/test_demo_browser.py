"""The demo page's live result list, in headless Chromium.

The test starts examples/demo/app.py and Chromium as child processes and
drives the page over the Chrome DevTools Protocol, with the pipe-based
``Browser`` client of tests/test_browser.py. Each wait runs inside the page:
one ``Runtime.evaluate`` call returns a promise that a MutationObserver
resolves as soon as the expected element appears, or rejects after
DOM_TIMEOUT.

The demo instance uses the test key, not the page's default ``demo-key``,
so every page first shows the rejected stream and then types the right key,
as a user would.

Needs the ``chromium`` binary (on Debian: ``apt-get install chromium``) and
is skipped without it.
"""

import hashlib
import json
import time
import uuid

import pytest

from tests.test_browser import CHROMIUM, Browser
from tests.test_demo import (
    API_KEY,
    SAMPLE,
    Demo,
    subscriber_log_lines,
    upload,
    wait_for_no_subscribers,
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason='Chromium is not installed (on Debian: apt-get install chromium)')

# Milliseconds a wait inside the page may take.
DOM_TIMEOUT_MS = 10_000
# Seconds a DevTools command may take. It is longer than DOM_TIMEOUT_MS, so
# a wait that times out in the page still returns its own error message.
COMMAND_TIMEOUT = DOM_TIMEOUT_MS / 1000 + 10

# A promise of the first truthy value of CONDITION, checked now and after
# every change to the document.
WAIT_SCRIPT = """
new Promise((resolve, reject) => {
  const condition = CONDITION;
  const check = () => {
    const value = condition();
    if (value) {
      observer.disconnect();
      clearTimeout(timer);
      resolve(value);
    }
  };
  const observer = new MutationObserver(check);
  const timer = setTimeout(() => {
    observer.disconnect();
    reject(new Error("timed out after TIMEOUT ms waiting for " + DESCRIPTION));
  }, TIMEOUT);
  observer.observe(document.documentElement,
                   { subtree: true, childList: true, attributes: true, characterData: true });
  check();
})
"""


class DemoPage:
    """One browser tab showing the demo page."""

    def __init__(self, browser, url):
        self.browser = browser
        self.url = url
        self.target_id = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        self.session_id = browser.send(
            'Target.attachToTarget', {'targetId': self.target_id, 'flatten': True})['sessionId']
        self.send('Page.enable')
        self.send('Runtime.enable')
        seen = len(browser.events)
        navigation = self.send('Page.navigate', {'url': url})
        assert 'errorText' not in navigation, navigation
        # Scripts evaluated before the load event may run in about:blank.
        self.wait_for_event('Page.loadEventFired', seen)
        assert self.evaluate('location.href') == url

    def send(self, method, params=None):
        return self.browser.send(
            method, params, session_id=self.session_id, timeout=COMMAND_TIMEOUT)

    def wait_for_event(self, method, start):
        """Wait for a DevTools event of this tab at or after browser.events[start]."""
        deadline = time.monotonic() + DOM_TIMEOUT_MS / 1000
        while True:
            for event in self.browser.events[start:]:
                if event.get('method') == method and event.get('sessionId') == self.session_id:
                    return event
            start = len(self.browser.events)
            try:
                message = self.browser.read_message(deadline)
            except AssertionError:
                pytest.fail(f'no {method} event within {DOM_TIMEOUT_MS} ms')
            self.browser.events.append(message)

    def evaluate(self, expression):
        """Run expression in the page, await a promise result, return its value."""
        result = self.send('Runtime.evaluate', {
            'expression': expression, 'awaitPromise': True, 'returnByValue': True})
        if 'exceptionDetails' in result:
            details = result['exceptionDetails']
            text = details.get('exception', {}).get('description') or details.get('text')
            pytest.fail(f'script failed in the page: {text}')
        return result['result'].get('value')

    def wait_for(self, condition, description):
        """Wait until the JS function condition returns a truthy value, and return it."""
        script = (WAIT_SCRIPT
                  .replace('CONDITION', condition)
                  .replace('DESCRIPTION', json.dumps(description))
                  .replace('TIMEOUT', str(DOM_TIMEOUT_MS)))
        return self.evaluate(script)

    def wait_for_row(self, sha256):
        """Wait for the result row with this SHA-256, and return its class and cells."""
        return self.wait_for(
            f"""() => {{
              const row = document.querySelector('#results tr[data-sha256="{sha256}"]');
              return row && {{ className: row.className,
                               cells: [...row.cells].map((cell) => cell.textContent) }};
            }}""",
            f'a row for {sha256}')

    def wait_for_row_gone(self, sha256):
        self.wait_for(
            f"""() => document.querySelector('#results tr[data-sha256="{sha256}"]') === null""",
            f'the row for {sha256} to go away')

    def live_status(self):
        return self.evaluate("document.getElementById('live-status').textContent")

    def connect_with_key(self, key):
        """Wait for the rejected first stream, type key and wait until live.

        Returns when the listing that follows the stream's hello has loaded,
        so a result that appears later can only have come from the stream.
        """
        rejected = self.wait_for(
            "() => document.getElementById('live-status').className === 'error'"
            " && document.getElementById('live-status').textContent",
            'the stream with the default key to be rejected')
        assert 'rejected' in rejected
        self.evaluate(f"""
            const input = document.getElementById('api-key');
            input.value = {json.dumps(key)};
            input.dispatchEvent(new Event('change'));
        """)
        self.wait_for(
            "() => document.getElementById('live-status').className === 'live'",
            'live updates to turn on')
        self.wait_for(
            "() => document.getElementById('last-response').textContent.startsWith('200 ')",
            'the result listing to load')

    def exceptions(self):
        """Return the texts of uncaught exceptions the page reported so far."""
        # Any command flushes the events Chromium sent before its reply.
        self.evaluate('0')
        return [
            event['params']['exceptionDetails'].get('text')
            for event in self.browser.events
            if event.get('method') == 'Runtime.exceptionThrown'
            and event.get('sessionId') == self.session_id]

    def close(self):
        self.browser.send('Target.closeTarget', {'targetId': self.target_id})


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    instance = Demo(tmp_path_factory.mktemp('demo-browser'))
    try:
        instance.wait_until_healthy()
        yield instance
    finally:
        instance.terminate()
        instance.kill_leftovers()


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    folder = tmp_path_factory.mktemp('chromium')
    browser = Browser(folder / 'profile', folder / 'chromium.log')
    try:
        yield browser
    finally:
        browser.close()


def close_and_wait_unsubscribed(page, demo):
    """Close the tab and wait until the storage worker drops its subscriber."""
    lines = subscriber_log_lines(demo)
    assert lines[-1].endswith('joined (1 open)'), lines
    page.close()
    wait_for_no_subscribers(demo)


def test_live_list_shows_upload_from_other_client(demo, browser):
    page = DemoPage(browser, demo.base_url + '/')
    page.connect_with_key(API_KEY)
    assert page.live_status() == 'Live updates: on'

    body = SAMPLE + uuid.uuid4().bytes
    sha256 = hashlib.sha256(body).hexdigest()
    response = upload(demo.client, body, name='from-httpx.txt')
    assert response.status_code == 201, response.text

    row = page.wait_for_row(sha256)
    # Only rows that arrive as "result" events get the "new" class.
    assert row['className'] == 'new'
    assert row['cells'][0] == 'from-httpx.txt'
    assert row['cells'][1] == str(len(body))
    assert row['cells'][4] == sha256[:16] + '…'

    deleted = demo.client.delete(
        f"/api/results/{response.json()['id']}", headers={'X-API-Key': API_KEY})
    assert deleted.status_code == 200
    page.wait_for_row_gone(sha256)

    assert page.exceptions() == []
    close_and_wait_unsubscribed(page, demo)


def test_form_upload_appears_live(demo, browser, tmp_path):
    page = DemoPage(browser, demo.base_url + '/')
    page.connect_with_key(API_KEY)

    body = SAMPLE + uuid.uuid4().bytes
    sha256 = hashlib.sha256(body).hexdigest()
    path = tmp_path / 'from-form.txt'
    path.write_bytes(body)
    document = page.send('DOM.getDocument')
    file_input = page.send('DOM.querySelector', {
        'nodeId': document['root']['nodeId'], 'selector': '#file'})
    page.send('DOM.setFileInputFiles', {'files': [str(path)], 'nodeId': file_input['nodeId']})
    page.evaluate("document.getElementById('upload-form').requestSubmit()")

    row = page.wait_for_row(sha256)
    assert row['className'] == 'new'
    assert row['cells'][0] == 'from-form.txt'
    assert row['cells'][1] == str(len(body))
    message = page.wait_for(
        "() => document.getElementById('message').textContent.startsWith('Stored ')"
        " && document.getElementById('message').textContent",
        'the upload message')
    result_id = message.split()[1]
    stored = demo.client.get(f'/api/results/{result_id}', headers={'X-API-Key': API_KEY})
    assert stored.status_code == 200
    assert stored.json()['sha256'] == sha256

    page.evaluate(
        f"""document.querySelector('#results tr[data-sha256="{sha256}"] button').click()""")
    page.wait_for_row_gone(sha256)
    after_delete = demo.client.get(
        f'/api/results/{result_id}', headers={'X-API-Key': API_KEY})
    assert after_delete.status_code == 404

    assert page.exceptions() == []
    close_and_wait_unsubscribed(page, demo)
