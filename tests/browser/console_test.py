#!/usr/bin/env python3
"""The operator console in a real browser: Debian's Chromium, driven by Playwright for Python.

Started by tests/it/console.rs (part of scripts/test) once a daemon runs with seeded runs; the
spec file it writes names the daemon's address, the runs to look at and the `playbookd ctl`
command line. Exits non-zero, listing every failed check, when anything is wrong.

Never downloads a browser: it launches /usr/bin/chromium (the Debian package) with a fresh
profile and no background networking.
"""

import json
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
STATUS_TEXT = {400: "Bad Request", 404: "Not Found"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Checks:
    """Collects failures instead of stopping at the first, so one run names them all."""

    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, condition, what):
        if condition:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"FAIL: {what}", file=sys.stderr, flush=True)
        return condition


def main(spec_path):
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    base = spec["base"]
    origin = urlsplit(base)
    checks = Checks()
    requests = []
    console_errors = []
    dialogs = []

    # Pages opened on purpose with a 4xx status: Chromium logs their status as a console error.
    expected_status = {}

    def on_console(page, msg):
        if msg.type != "error":
            return
        status = expected_status.get(page.url)
        if status is not None and msg.text == f"Failed to load resource: the server responded with a status of {status} ({STATUS_TEXT[status]})":
            return
        console_errors.append(f"{page.url}: {msg.text}")

    def watch(page):
        page.on("console", lambda msg: on_console(page, msg))
        page.on("pageerror", lambda error: console_errors.append(f"{page.url}: page error {error}"))

        def on_dialog(dialog):
            dialogs.append(f"{page.url}: {dialog.type} {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)

    def open_page(page, path, status=200):
        if status != 200:
            expected_status[base + path] = status
        response = page.goto(base + path, wait_until="load")
        checks.check(response is not None and response.status == status,
                     f"GET {path}: status {response.status if response else None}, expected {status}")
        if response is not None:
            headers = response.headers
            checks.check(headers.get("content-security-policy") == spec["csp"],
                         f"GET {path}: CSP header {headers.get('content-security-policy')!r}")
            checks.check("set-cookie" not in headers, f"GET {path}: sets a cookie")
            checks.check(headers.get("x-content-type-options") == "nosniff", f"GET {path}: no nosniff")
        return response

    def rows(page, table):
        return page.eval_on_selector_all(f"table#{table} tbody tr", "rs => rs.map(r => r.dataset.step || r.innerText)")

    with tempfile.TemporaryDirectory(prefix="pbd-chromium-") as profile_root, sync_playwright() as playwright:
        profiles = []

        def new_context(**options):
            # Each context is a browser of its own with a fresh, empty profile directory.
            profile = tempfile.mkdtemp(prefix="profile-", dir=profile_root)
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                **options,
            )
            context.on("request", lambda request: requests.append(request.url))
            profiles.append(profile)
            return context

        context = new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        watch(page)

        # ---- SAFE-HALT banner on every page while halted ----
        halted = spec["halted"]
        for path in ["/ui/", f"/ui/runs/{spec['rolled_back']}", "/ui/approvals", "/ui/registry", "/ui/nope"]:
            open_page(page, path, 404 if path == "/ui/nope" else 200)
            banner = page.locator("section.halt")
            checks.check(banner.count() == 1, f"{path}: SAFE-HALT banner count {banner.count()}")
            if banner.count() == 1:
                text = banner.inner_text()
                checks.check("SAFE-HALT" in text, f"{path}: banner lacks SAFE-HALT: {text!r}")
                checks.check(halted in text, f"{path}: banner does not name the halted run {halted}")
                checks.check(spec["halt_undo_step"] in text, f"{path}: banner does not name the failed undo")
                checks.check("playbookd ctl halt-resolve --reason" in text, f"{path}: banner lacks the command: {text!r}")
                checks.check("UTC" in page.inner_text("footer") and "ago" in text,
                             f"{path}: banner has no UTC time with age: {text!r}")

        # ---- the runs page, then follow a run to its timeline ----
        open_page(page, "/ui/")
        listed = page.eval_on_selector_all("table#runs a.run-link", "links => links.map(a => a.innerText)")
        for run in [spec["rolled_back"], spec["xss"], spec["gated"], halted]:
            checks.check(run in listed, f"runs page does not list {run}: {listed}")
        checks.check(listed and listed[0] == halted, f"runs page is not newest first: {listed}")
        headers = page.eval_on_selector_all("table#runs thead th", "ths => ths.map(t => t.getAttribute('scope'))")
        checks.check(headers and all(h == "col" for h in headers), f"runs table headers lack scope=col: {headers}")
        if spec.get("screenshots"):
            page.screenshot(path=f"{spec['screenshots']}/console-runs.png", full_page=True)

        # A filtered view is a link: state=rolled_back lists the rolled-back run and not the halted one.
        open_page(page, "/ui/?state=rolled_back")
        filtered = page.eval_on_selector_all("table#runs a.run-link", "links => links.map(a => a.innerText)")
        checks.check(spec["rolled_back"] in filtered and halted not in filtered,
                     f"state filter: {filtered}")
        open_page(page, "/ui/?state=exploded", 400)
        checks.check("`state`" in page.inner_text("#error-detail"), "a bad filter does not name the parameter")

        open_page(page, "/ui/")
        page.click(f"a.run-link[href='/ui/runs/{spec['rolled_back']}']")
        page.wait_for_load_state("load")
        checks.check(page.url == f"{base}/ui/runs/{spec['rolled_back']}", f"the run link led to {page.url}")
        steps = rows(page, "steps")
        checks.check(steps == ["one", "two", "three"], f"steps not in order: {steps}")
        undone = rows(page, "rollback")
        checks.check(undone == ["two", "one"], f"rollback not reversed: {undone}")
        step_text = page.inner_text("table#steps")
        checks.check("permanent" in step_text or "transient" in step_text, "no error class on the failed step")
        events = page.locator("table#events tbody tr")
        checks.check(events.count() >= 8, f"only {events.count()} events on the timeline")
        evidence = page.eval_on_selector_all("table#events td.evidence", "cells => cells.map(c => c.innerText)")
        checks.check(evidence and all("seq " in e and ("checkpoint seq" in e or "not yet checkpointed" in e) for e in evidence),
                     f"an event lacks its evidence: {evidence[:3]}")
        covered = [e for e in evidence if "checkpoint seq" in e]
        checks.check(len(covered) == len(evidence),
                     f"{len(evidence) - len(covered)} events of a finished run not covered by a checkpoint: {evidence}")
        actors = page.eval_on_selector_all("table#events td.actor", "cells => cells.map(c => c.innerText)")
        checks.check("uid" in " ".join(actors) and "automation" in " ".join(actors), f"actors: {actors}")
        decision = page.inner_text("#decision")
        checks.check("Signed by" in decision and len(page.inner_text("#signers")) >= 64, f"no signer key ids: {decision!r}")
        if spec.get("screenshots"):
            page.screenshot(path=f"{spec['screenshots']}/console-run.png", full_page=True)

        # ---- hostile subject shown as text, nothing executed ----
        open_page(page, f"/ui/runs/{spec['xss']}")
        subject = page.inner_text("#subject")
        for hostile in spec["hostile"]:
            # The subject is shown as JSON: the hostile text is there, with JSON's own escapes.
            as_json = json.dumps(hostile)[1:-1]
            checks.check(as_json in subject, f"hostile text not shown as text: {as_json!r} in {subject!r}")
        checks.check(page.evaluate("() => window.__pwned === undefined"), "injected code ran")
        checks.check(page.locator("img").count() == 0, "an injected <img> made it into the DOM")
        checks.check(page.locator("script").count() == 1, "a script element besides the console's own")
        checks.check(page.locator("script[src='/ui/static/console.js']").count() == 1, "the console script is missing")

        # ---- the approval waiting, with its vote and the commands to copy ----
        open_page(page, "/ui/approvals")
        gate = page.locator(f"article.gate[data-run='{spec['gated']}']")
        checks.check(gate.count() == 1, f"gate of {spec['gated']} not on the approvals page")
        if gate.count() == 1:
            text = gate.inner_text()
            checks.check("critical" in text and "1 of 2 approvals" in text, f"gate summary: {text!r}")
            votes = gate.locator("table.votes tbody tr")
            checks.check(votes.count() == 1 and spec["vote_reason"] in votes.first.inner_text(),
                         f"vote not shown: {text!r}")
            checks.check(f"playbookd ctl approve {spec['gated']} {spec['gated_step']} --reason" in text,
                         f"no approve command: {text!r}")
            checks.check(f"playbookd ctl deny {spec['gated']} {spec['gated_step']} --reason" in text,
                         f"no deny command: {text!r}")
            checks.check(spec["secret"] not in page.content(), "a secret parameter reached the page")
        checks.check(page.inner_text("#waiting-count").strip() == "1", "waiting count in the navigation")

        # ---- registry ----
        open_page(page, "/ui/registry")
        active = page.inner_text("table#active")
        for playbook in spec["playbooks"]:
            checks.check(playbook in active, f"{playbook} not among the active playbooks")
        refused = page.inner_text("table#refused") if page.locator("table#refused").count() else ""
        checks.check(spec["refused_file"] in refused, f"refused file not listed: {refused!r}")
        checks.check(page.locator("table#bindings tbody tr").count() == len(spec["playbooks"]), "bindings not listed")

        # ---- halt-resolve through control.sock: the banner goes away ----
        resolved = subprocess.run(spec["ctl"] + ["halt-resolve", "--reason", "checked the host by hand"],
                                  capture_output=True, text=True, timeout=30)
        checks.check(resolved.returncode == 0, f"halt-resolve failed: {resolved.stdout} {resolved.stderr}")
        for path in ["/ui/", f"/ui/runs/{halted}", "/ui/approvals", "/ui/registry"]:
            open_page(page, path)
            checks.check(page.locator("section.halt").count() == 0, f"{path}: the banner stayed after halt-resolve")

        # ---- narrow window: nothing wider than the screen but the scrolling tables ----
        narrow = new_context(viewport={"width": 390, "height": 844})
        small = narrow.new_page()
        watch(small)
        for path in ["/ui/", f"/ui/runs/{spec['rolled_back']}", "/ui/approvals", "/ui/registry"]:
            open_page(small, path)
            overflow = small.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            checks.check(overflow <= 1, f"{path}: {overflow}px wider than a 390px window")
        narrow.close()

        # ---- JavaScript off: the same content, server-rendered ----
        no_js = new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
        plain = no_js.new_page()
        watch(plain)
        open_page(plain, "/ui/")
        checks.check(plain.locator("table#runs tbody tr").count() >= 4, "runs page empty without JavaScript")
        open_page(plain, f"/ui/runs/{spec['rolled_back']}")
        checks.check(plain.locator("table#steps tbody tr").count() == 3, "run page empty without JavaScript")
        no_js.close()

        # ---- every page refuses writes ----
        api = context.request
        for path in spec["pages"]:
            for method in ["POST", "PUT", "PATCH", "DELETE"]:
                response = api.fetch(base + path, method=method, max_redirects=0)
                checks.check(response.status == 405, f"{method} {path}: {response.status}")
                checks.check(response.headers.get("allow") == "GET, HEAD", f"{method} {path}: Allow {response.headers.get('allow')!r}")

        checks.check(context.cookies() == [], f"cookies were set: {context.cookies()}")
        context.close()

    # ---- nothing but the daemon, no console errors, no dialogs ----
    foreign = [url for url in requests if urlsplit(url).netloc != origin.netloc or urlsplit(url).scheme != origin.scheme]
    checks.check(not foreign, f"requests to other hosts: {foreign}")
    checks.check(len(requests) > 20, f"only {len(requests)} requests recorded")
    checks.check(not console_errors, f"console errors: {console_errors}")
    checks.check(not dialogs, f"dialogs opened: {dialogs}")

    print(f"{checks.passed} passed, {len(checks.failed)} failed", flush=True)
    return 0 if not checks.failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
