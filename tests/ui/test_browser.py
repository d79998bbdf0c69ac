"""The web page in headless Chromium: a physicist logs in with a token from the test identity provider,
submits through the API, watches the job finish on the page, opens the ROC plot and sees the model TFaaS
now serves. The screenshots are left for a person to look at (their paths are printed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth.cases import ALICE, AUDIENCE, BOB, service_auth
from tests.auth.idp import IdentityProvider
from tests.auth.mlaas_server import data_directory, mlaas_api
from tests.server.conftest import ENDLESS_PARAMS, TINY_MODEL, TINY_PARAMS, worker_process
from tests.tfaas.server import tfaas_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The flags that work in a container as root, without a display or network beyond loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
)
JOB_TIMEOUT_S = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (scripts/debian-packages.txt)",
    ),
]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider.running() as provider:
        yield provider


@pytest.fixture(scope="module")
def remote_samples(xrootd, sample_files) -> dict[str, str]:
    return {
        kind: xrootd.proxy_url(xrootd.add_file(sample_files[kind], f"ui/{kind}.root"))
        for kind in ("signal", "background")
    }


@pytest.fixture
def browser(tmp_path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_watch_a_job_finish_on_the_page(browser, idp, tmp_path, remote_samples):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    token = idp.mint(ALICE, AUDIENCE)
    with appliance(idp, remote_samples) as (api, data_dir):
        body = {
            "name": "higgs",
            "files": [remote_samples["signal"], remote_samples["background"]],
            "labels": [1, 0],
            "model": TINY_MODEL,
            "params": TINY_PARAMS,
        }
        submitted = requests.post(f"{api}/jobs", json=body, headers=bearer(token), timeout=60)
        assert submitted.status_code == 201, submitted.text
        job = submitted.json()

        # The page without a token asks for one; Bob's token shows none of Alice's jobs.
        browser.get(f"{api}/ui/")
        wait = WebDriverWait(browser, 30)
        wait.until(seen.text_to_be_present_in_element((By.ID, "notice"), "Log in"))
        browser.get(f"{api}/ui/#token={idp.mint(BOB, AUDIENCE)}")
        wait.until(lambda d: "updated" in d.find_element(By.ID, "updated").text)
        assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job["id"]}"]')
        browser.execute_script("sessionStorage.clear()")

        # Alice logs in through the fragment: the token leaves the address bar and stays in the tab.
        browser.get(f"{api}/ui/#token={token}")
        row = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{job["id"]}"]')))
        assert "#token" not in browser.current_url
        assert browser.execute_script("return sessionStorage.getItem('mlaas4hep.token')") == token
        assert "alice.higgs" in row.text
        row.find_element(By.CSS_SELECTOR, "button.open").click()
        finished = WebDriverWait(browser, JOB_TIMEOUT_S, poll_frequency=1)
        try:
            finished.until(seen.text_to_be_present_in_element((By.ID, "detail-state"), "succeeded"))
        except Exception:
            logs = "".join(p.read_text()[-3000:] for p in sorted(data_dir.glob("*.log")))
            pytest.fail(f"the page never showed the job succeeded: {state_of(browser)}\n{logs}")
        roc = wait.until(seen.visibility_of_element_located((By.ID, "plot-roc")))
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", roc) > 100)
        assert "epoch" in browser.find_element(By.ID, "detail-facts").text
        assert browser.find_element(By.ID, "download-model").is_displayed()
        wait.until(lambda d: "job" in d.find_element(By.ID, "log").text.lower())
        # TFaaS serves the model the job published, and the page lists it with its version.
        wait.until(seen.text_to_be_present_in_element((By.ID, "models"), "alice.higgs"))
        folder = screenshot_dir(tmp_path)
        page_png = folder / "mlaas4hep-page.png"
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(page_png))

        roc.click()
        viewer = wait.until(seen.visibility_of_element_located((By.ID, "viewer-img")))
        assert browser.execute_script("return arguments[0].naturalWidth", viewer) > 100
        roc_png = folder / "mlaas4hep-roc.png"
        browser.save_screenshot(str(roc_png))
        for png in (page_png, roc_png):
            assert png.read_bytes().startswith(b"\x89PNG")
            print(f"screenshot: {png}")

        # The page's own form: bad JSON is said; a job submitted there is cancelled, then deleted.
        browser.find_element(By.ID, "viewer").click()
        workflow = browser.find_element(By.ID, "workflow")
        workflow.clear()
        workflow.send_keys("{not json")
        browser.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "notice"), "not valid JSON"))
        endless = {**body, "name": "endless", "params": ENDLESS_PARAMS}
        browser.execute_script("arguments[0].value = arguments[1]", workflow, json.dumps(endless))
        browser.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "notice"), "alice.endless"))
        wait.until(seen.text_to_be_present_in_element((By.ID, "detail-facts"), "alice.endless"))
        wait.until(seen.element_to_be_clickable((By.ID, "cancel"))).click()
        WebDriverWait(browser, 60).until(
            seen.text_to_be_present_in_element((By.ID, "detail-state"), "cancelled")
        )
        endless_id = browser.find_element(By.ID, "detail-id").text
        wait.until(seen.element_to_be_clickable((By.ID, "delete"))).click()
        browser.switch_to.alert.accept()
        wait.until(seen.invisibility_of_element_located((By.CSS_SELECTOR, f'tr[data-job="{endless_id}"]')))
        gone = requests.get(f"{api}/jobs/{endless_id}", headers=bearer(token), timeout=30)
        assert gone.status_code == 404
        assert not (data_dir / "jobs" / endless_id).exists()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def state_of(browser) -> str:
    from selenium.webdriver.common.by import By

    return " | ".join(browser.find_element(By.ID, name).text for name in ("notice", "detail-state", "log"))


@contextlib.contextmanager
def appliance(idp: IdentityProvider, remote_samples: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """TFaaS on the data directory's model repository, the API (``tfaas_url`` set) and a worker, all with
    OIDC identities from the test provider; yields the API's URL and the data directory."""
    auth = json.dumps(service_auth(idp))
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(data_directory())
        (data_dir / "models").mkdir()
        tfaas_work = Path(tempfile.mkdtemp(prefix="mlaas4hep-ui-tfaas-"))
        stack.callback(shutil.rmtree, tfaas_work, ignore_errors=True)
        tfaas = stack.enter_context(tfaas_server(data_dir / "models", tfaas_work, env={"TFAAS_AUTH": auth}))
        api = stack.enter_context(mlaas_api(data_dir, idp, workers=1, tfaas_url=tfaas.url))
        stack.enter_context(worker_process(data_dir, data_dir / "worker.log", *remote_samples.values()))
        yield api, data_dir
