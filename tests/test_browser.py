"""The browser client in a real browser: Debian's chromium, driven through chromium-driver
by Selenium (nothing downloaded: the driver's path is given, Selenium Manager stays off).

Two browsers and a terminal client chat; receipts arrive; a hostile message is shown as
text; a page of another site cannot connect; a browser stays connected through an
upgrade, and one on wss:// comes back by itself in under 2 s keeping what was typed."""

import http.server
import json
import os
import re
import shutil
import threading
import time

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ctl, status_port
from rawclient import RawClient, confirming, wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("TCPCHATD_SCREENSHOT")  # where to keep the page's picture


@pytest.fixture
def browsers(tmp_path):
    """open(url, *chromium_args) -> a headless Chromium showing url; all quit after."""
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), \
        "chromium and chromium-driver are needed (.ci/run installs them)"
    os.environ["SE_OFFLINE"] = "true"  # never a download by Selenium Manager
    opened = []

    def open_page(url: str, *args: str, width: int = 1000):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", f"--window-size={width},700",
                    f"--user-data-dir={tmp_path / f'profile{len(opened)}'}", *args):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        opened.append(driver)
        driver.set_page_load_timeout(20)
        driver.get(url)
        return driver

    yield open_page
    for driver in opened:
        driver.quit()


def wait(driver, condition, timeout: float = 10.0):
    # an element read while the page renders it again (the room tabs) is stale: the
    # condition is asked again at the next poll (CI once failed on it)
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d))


def enter(driver, nickname: str) -> None:
    driver.find_element(By.ID, "nickname").send_keys(nickname, Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "status").text.endswith(nickname))


def type_line(driver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def lines(driver) -> list[str]:
    return [node.text for node in driver.find_elements(By.CSS_SELECTOR, "#log .line .text")]


def line_with(driver, text: str):
    """The log's line whose text is `text` (waited for)."""
    def found(d):
        for node in d.find_elements(By.CSS_SELECTOR, "#log .line"):
            parts = node.find_elements(By.CSS_SELECTOR, ".text")
            if parts and parts[0].get_attribute("textContent") == text:
                return node
        return None
    return wait(driver, found)


def test_two_browsers_and_a_terminal_client_chat_with_receipts(chat, browsers, tmp_path):
    h = chat(web=True)
    page = f"http://127.0.0.1:{h.web_port}/"
    alice, bob = browsers(page), browsers(page, width=390)  # bob on a phone's width
    enter(alice, "alice")
    enter(bob, "bob")
    carol = h.client("carol")
    seen: list[dict] = []
    confirming(carol, seen=seen)  # carol reads and confirms as a reader does
    wait(alice, lambda d: "carol" in d.find_element(By.ID, "member-list").text)

    type_line(alice, "hello from a browser")
    assert line_with(bob, "hello from a browser")
    mine = line_with(alice, "hello from a browser")  # both others confirmed it
    wait(alice, lambda d: mine.find_element(By.CSS_SELECTOR, ".receipt").text == "✓ 2/2")
    assert any(f.get("message") == "alice: hello from a browser" for f in seen)

    said = carol.say("hey alice, from the terminal")
    receipt = wait_for(lambda: next((f for f in seen if f.get("type") == "confirm"
                                     and f["uuid"] == said), None))
    assert (receipt["delivered"], receipt["recipients"]) == (2, 2)  # both pages confirmed
    heard = line_with(alice, "hey alice, from the terminal")
    assert "mention" in heard.get_attribute("class").split()  # alice is named in it
    assert "mention" not in line_with(bob, "hey alice, from the terminal").get_attribute(
        "class").split()

    type_line(bob, "/msg alice just between us")
    private = line_with(alice, "just between us")
    assert "private" in private.get_attribute("class").split()
    assert not any(f.get("message", "").endswith("just between us") for f in seen)
    type_line(alice, "/me waves")
    waved = line_with(bob, "waves")
    assert waved.find_element(By.CSS_SELECTOR, ".nick").text == "* alice"

    carol.request("nick", nickname="carola")
    wait(alice, lambda d: "carola" in d.find_element(By.ID, "member-list").text)
    assert "carol is now carola" in lines(bob) or wait(
        bob, lambda d: "carol is now carola" in lines(d))
    # the phone's width: the members list folds away behind its button
    assert not bob.find_element(By.ID, "members").is_displayed()
    bob.find_element(By.ID, "toggle-members").click()
    assert bob.find_element(By.ID, "members").is_displayed()
    picture = SCREENSHOT or str(tmp_path / "page.png")
    alice.save_screenshot(picture)
    with open(picture, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [m.via for m in h.hall.members() if m.nickname != "carola"] == ["web", "web"]


def test_a_hostile_message_is_shown_as_text(chat, browsers):
    h = chat(web=True)
    alice = browsers(f"http://127.0.0.1:{h.web_port}/")
    enter(alice, "alice")
    mallory = h.client("mallory")
    hostile = ['<img src=x onerror="document.title=\'pwned\'">',
               "<script>document.title='pwned'</script>",
               "\u202eevil.exe\u202c and \u2067rtl\u2069",
               "first line\nsecond line"]
    for text in hostile:
        mallory.say(text)
    for text in hostile:
        node = line_with(alice, text)  # its text exactly, as text
        assert node.find_elements(By.CSS_SELECTOR, "img, script") == []
    assert alice.title == "tcpchat"  # no handler ran
    assert alice.find_elements(By.CSS_SELECTOR, "#log img") == []
    two_lines = line_with(alice, "first line\nsecond line").find_element(By.CSS_SELECTOR, ".text")
    assert two_lines.text.splitlines() == ["first line", "second line"]
    # the sender's name is isolated from the text: a right-to-left name reorders nothing
    nick = line_with(alice, hostile[2]).find_element(By.CSS_SELECTOR, ".nick")
    assert nick.tag_name == "bdi" and nick.text == "mallory"


def test_a_page_of_another_origin_cannot_connect(chat, browsers):
    h = chat(web=True)
    evil = (f"<!DOCTYPE html><title>waiting</title><script>"
            f"const ws = new WebSocket('ws://127.0.0.1:{h.web_port}/chat');"
            "ws.onmessage = () => { document.title = 'connected'; };"
            "ws.onclose = () => { if (document.title !== 'connected') "
            "document.title = 'refused'; };</script>").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(evil)

        def log_message(self, *args):
            pass
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page = browsers(f"http://127.0.0.1:{other.server_port}/")
        wait(page, lambda d: d.title in ("refused", "connected"))
        assert page.title == "refused"
    finally:
        other.shutdown()
        other.server_close()
    refusals = [line for line in h.log.named("http") if line["status"] == 403]
    assert refusals and refusals[0]["origin"] == f"http://127.0.0.1:{other.server_port}"
    assert h.hall.members() == []


def web_ports(daemon) -> dict[str, int]:
    status = [line for line in daemon.wait_notify("READY=1").splitlines()
              if line.startswith("STATUS=")][0]
    return {kind: int(port) for port, kind in
            re.findall(r"127\.0\.0\.1:(\d+) \((web|web, tls)\)", status)}


def test_a_browser_stays_connected_through_an_upgrade(daemon_factory, browsers, short_tmp):
    admin = os.path.join(short_tmp, "b.sock")
    d = daemon_factory("--listen-web", "127.0.0.1:0", "--admin-socket", admin)
    alice = browsers(f"http://127.0.0.1:{web_ports(d)['web']}/")
    enter(alice, "alice")
    carol = RawClient(status_port(d))
    carol.join("carol")
    before = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    result = ctl(admin, "upgrade")
    assert result.returncode == 0, result.stderr
    carol.say("said after the upgrade")
    assert line_with(alice, "said after the upgrade")
    type_line(alice, "and the browser answers")
    got = carol.read_until(lambda f: f.get("type") == "message")
    assert got["message"] == "alice: and the browser answers"
    after = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
    # the same connection: connected when it was, never a reconnect
    assert [(c["nickname"], c["connected"], c["via"]) for c in after] == \
        [(c["nickname"], c["connected"], c["via"]) for c in before]
    assert not any("reconnect" in text or "restart" in text for text in lines(alice))
    assert re.search(r"upgrade ok=yes .* clients=2 tls_closed=0", d.stderr())


def test_a_wss_page_comes_back_by_itself_within_2s_keeping_what_was_typed(
        tls_daemon, browsers, short_tmp):
    admin = os.path.join(short_tmp, "s.sock")
    d, _, _ = tls_daemon("--admin-socket", admin, "--listen-web-tls", "127.0.0.1:0")
    # the test CA is not the browser's: its certificate errors are waved through
    alice = browsers(f"https://localhost:{web_ports(d)['web, tls']}/",
                     "--ignore-certificate-errors")
    enter(alice, "alice")
    box = alice.find_element(By.ID, "input")
    box.send_keys("half a thought")  # typed, not sent
    before = json.loads(ctl(admin, "who", "--json").stdout)["clients"][0]
    assert before["via"] == "wss"
    assert ctl(admin, "upgrade").returncode == 0
    upgraded = time.monotonic()

    def back():
        clients = json.loads(ctl(admin, "who", "--json").stdout)["clients"]
        return clients and clients[0]["connected"] != before["connected"] and clients[0]
    again = wait_for(back, timeout=5)
    assert time.monotonic() - upgraded <= 2.0
    assert (again["nickname"], again["via"]) == ("alice", "wss")
    assert alice.find_element(By.ID, "input").get_attribute("value") == "half a thought"
    wait(alice, lambda d: d.find_element(By.ID, "status").text.endswith("alice"))
    assert "tls_closed=1" in d.stderr()


def test_a_moderator_logs_in_from_the_page_and_a_wrong_password_is_said(admin_chat, browsers,
                                                                          short_tmp):
    from tcpchatd.chat.accounts import AccountBook
    book = AccountBook(os.path.join(short_tmp, "state"))
    book.add("Ann", "correct horse", "moderator", 0)
    try:
        h, _, _ = admin_chat(web=True, accounts=book)  # kicks run the admin's code
        page = f"http://127.0.0.1:{h.web_port}/"
        wrong = browsers(page)
        wrong.find_element(By.ID, "with-account").click()
        wrong.find_element(By.ID, "account").send_keys("ann")
        wrong.find_element(By.ID, "password").send_keys("battery staple", Keys.ENTER)
        wait(wrong, lambda d: d.find_element(By.ID, "login-error").text)
        assert wrong.find_element(By.ID, "login-error").text == "unknown account or wrong password"
        assert wrong.find_element(By.ID, "login").is_displayed()  # the form, to try again
        ann = browsers(page)
        ann.find_element(By.ID, "with-account").click()
        ann.find_element(By.ID, "account").send_keys("ann")
        ann.find_element(By.ID, "password").send_keys("correct horse", Keys.ENTER)
        wait(ann, lambda d: d.find_element(By.ID, "status").text.endswith("Ann"))
        troll = h.client("troll")
        wait(ann, lambda d: "troll" in d.find_element(By.ID, "member-list").text)
        type_line(ann, "/kick troll spamming")
        assert troll.read_until(lambda f: f.get("event") == "kick")["reason"] == "spamming"
        wait(ann, lambda d: "troll" not in d.find_element(By.ID, "member-list").text)
        assert [m.account for m in h.hall.members()] == ["Ann"]
    finally:
        book.close()


def test_a_tcpchat_client_reaches_two_browsers_and_rooms_are_tabs(chat, browsers):
    """tcpchat-client (pipe mode) posts to two browsers, which confirm it; a room joined
    in the page is a tab with its unread count; a late browser is shown the history."""
    import subprocess

    from test_daemon import CLIENT
    h = chat(web=True, flood_rate=0)
    page = f"http://127.0.0.1:{h.web_port}/"
    alice, bob = browsers(page), browsers(page)
    enter(alice, "alice")
    enter(bob, "bob")
    result = subprocess.run([*CLIENT, "--port", str(h.port), "--nick", "ci-bot"],
                            input="build 1234 passed\n", capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "delivered to 2 of 2: build 1234 passed\n"
    assert line_with(alice, "build 1234 passed") and line_with(bob, "build 1234 passed")
    type_line(alice, "/join dev")
    wait(alice, lambda d: [t.text for t in d.find_elements(By.CSS_SELECTOR, "#rooms button")]
         == ["#general", "#dev"])
    assert alice.find_element(By.CSS_SELECTOR, "#rooms button.current").text == "#dev"
    dev = h.client("devon")
    dev.enter("dev")
    dev.say("in dev only", room="dev")
    assert line_with(alice, "in dev only")
    carol = h.client("carol")
    carol.say("meanwhile in general")  # alice looks at #dev: #general counts it unread
    wait(alice, lambda d: d.find_element(By.CSS_SELECTOR, "#rooms button[data-room='general']")
         .text == "#general1")
    alice.find_element(By.CSS_SELECTOR, "#rooms button[data-room='general']").click()
    assert line_with(alice, "meanwhile in general")
    assert "in dev only" not in lines(alice)
    late = browsers(page)
    enter(late, "late")
    earlier = line_with(late, "build 1234 passed")  # the room's history, on joining
    assert "history" in earlier.get_attribute("class").split()
