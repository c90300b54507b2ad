"""The browser console at /console, end to end: a real Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
by Selenium) against the embedded service on the tiny preset.

One scenario, in order: a wrong key is refused with a message, sign in, upload three images and train with five
steps watching the progress reach 100%, look at the concept's masks and attention diagnostic, generate with two
concepts and a style (stage-1 and styled images with both concept masks overlaid, toggled per concept), the same
seed with the other fusion method in one click, an expired signed URL refreshed by reading the job again, the jobs
list and a job's timeline, cancel a queued job; every page loads in under a second. Screenshots of each page go to
``test-output/console/`` (git-ignored); ``TESSERA_UPDATE_DOCS_SCREENSHOT=1`` also writes docs/console-generate.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image, ImageDraw

from services.demo import sample_images
from services.embedded import Stack
from tests.fixtures.receiver import Receiver, receiver

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("TESSERA_TEST_OUTPUT", REPO / "test-output")) / "console"
DOCS_SCREENSHOT = REPO / "docs" / "console-generate.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# The budget for one page of the console, from navigation to its content shown (embedded service, loopback).
PAGE_BUDGET_MS = 1000.0

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromium-driver are not installed (make browser-tools installs them as root)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (only importable where the dev extra is installed)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

T = TypeVar("T")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        data_dir=tmp_path_factory.mktemp("console-stack"),
        preset="tiny",
        extra_env={
            "OMP_NUM_THREADS": "1",
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000",
            # The test's webhook receiver listens on loopback over plain http; a failed delivery is retried at once.
            "TESSERA_WEBHOOKS__ALLOW_PRIVATE": "true",
            "TESSERA_WEBHOOKS__ALLOW_HTTP": "true",
            "TESSERA_WEBHOOKS__RETRY_DELAYS_SECONDS": "[0.5, 0.5]",
        },
    )
    with s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(CHROMEDRIVER, log_output=str(OUTPUT / "chromedriver.log"))
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30) as c:
        yield c


def wait(driver: webdriver.Chrome, what: str, check: Callable[[webdriver.Chrome], T], timeout: float = 60) -> T:
    """Wait until ``check`` returns something truthy; on timeout, save a screenshot and fail naming ``what``."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)  # type: ignore[no-any-return]
    except TimeoutException:
        driver.save_screenshot(str(OUTPUT / f"timeout-{what.replace(' ', '-')[:40]}.png"))
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def find(driver: webdriver.Chrome, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def finds(driver: webdriver.Chrome, css: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, css)


def shot(driver: webdriver.Chrome, name: str) -> Path:
    path = OUTPUT / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_page(driver: webdriver.Chrome, stack: Stack, fragment: str) -> float:
    """Load /console at ``fragment`` as a fresh navigation and return the milliseconds from navigation start until
    the page's content was shown (``data-ready``, set once the page's API calls answered and it rendered)."""
    driver.get("about:blank")  # a fresh load, not a same-document fragment change (the tab keeps its session)
    driver.get(f"{stack.url}/console#{fragment}")
    wait(
        driver, f"page {fragment}", lambda d: d.execute_script("return document.getElementById('view').dataset.ready")
    )
    ready = driver.execute_script("return document.getElementById('view').dataset.ready")
    assert ready != "error", find(driver, "#view").text
    # Time since navigation start at the moment the page said it was ready.
    return float(driver.execute_script("return Number(document.getElementById('view').dataset.readyAt)"))


def png_file(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def style_png() -> bytes:
    img = Image.new("RGB", (64, 64), (20, 40, 120))
    draw = ImageDraw.Draw(img)
    for x in range(0, 64, 8):
        draw.line([(x, 0), (x, 63)], fill=(250, 200, 30), width=2)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def train_by_api(api: httpx.Client, name: str, kind: str, steps: int, webhook: str | None = None) -> dict[str, Any]:
    files = [
        api.post("/v1/files", files={"file": ("i.png", d, "image/png")}).json()["id"]
        for d in sample_images(kind, 64, 3)
    ]
    body = {
        "concept": {"name": name, "class_word": kind},
        "images": files,
        "options": {"max_train_steps": steps, "batch_size": 1},
    }
    if webhook is not None:
        body["webhook"] = webhook
    response = api.post("/v1/trainings", json=body)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_job(api: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


@pytest.fixture
def stack_receiver() -> Iterator[Receiver]:
    with receiver(script=[500]) as hook:
        yield hook


def test_console_end_to_end(
    stack: Stack, browser: webdriver.Chrome, api: httpx.Client, stack_receiver: Receiver, tmp_path: Path
) -> None:
    driver = browser
    timings: dict[str, float] = {}
    fragments: dict[str, str] = {}
    # A second concept for the two-concept generation, trained through the API while the browser works; its
    # webhook's first delivery fails (500) and the retry succeeds, for the job page's deliveries.
    hook = stack_receiver
    ring = train_by_api(api, "api-ring", "ring", steps=5, webhook=hook.url)

    # ---- a wrong key: a clear message, not a blank page ------------------------------------------------------
    driver.get(f"{stack.url}/console")
    wait(driver, "the sign-in form", lambda d: find(d, "#signin").is_displayed())
    find(driver, "#api-key").send_keys("not-a-key-of-this-service")
    find(driver, "#signin-submit").click()
    error = wait(
        driver, "the wrong-key message", lambda d: find(d, "#signin-error").is_displayed() and find(d, "#signin-error")
    )
    assert "not accepted" in error.text and "invalid_api_key" in error.text, error.text
    assert not find(driver, "#view").text.strip()
    shot(driver, "signin-wrong-key")

    # ---- sign in ---------------------------------------------------------------------------------------------
    key_field = find(driver, "#api-key")
    key_field.clear()
    key_field.send_keys(stack.api_key)
    find(driver, "#signin-submit").click()
    wait(
        driver, "the concepts page", lambda d: d.execute_script("return document.getElementById('view').dataset.ready")
    )
    assert driver.execute_script("return sessionStorage.getItem('tessera.console.apiKey')") == stack.api_key
    assert find(driver, "#api-key").get_attribute("value") == ""

    # ---- train: three images dropped in, five steps, progress to 100% ----------------------------------------
    fragments["train"] = "/train"
    timings["train"] = open_page(driver, stack, fragments["train"])
    stars = sample_images("star", 64, 3)
    # Two through the file chooser, the third dropped on the drop zone (a drop event carrying the file, as a drag
    # from the desktop delivers it).
    find(driver, "#train-files").send_keys("\n".join(png_file(tmp_path, f"star{i}.png", stars[i]) for i in range(2)))
    wait(driver, "two image cards", lambda d: len(finds(d, "#train-images .train-image")) == 2)
    driver.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[1]), c => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], 'star2.png', {type: 'image/png'}));
        for (const type of ['dragover', 'drop']) {
          arguments[0].dispatchEvent(new DragEvent(type, {dataTransfer: files, bubbles: true, cancelable: true}));
        }""",
        find(driver, "#dropzone"),
        base64.b64encode(stars[2]).decode(),
    )
    wait(driver, "three image cards", lambda d: len(finds(d, "#train-images .train-image")) == 3)
    find(driver, "#train-name").send_keys("console-star")
    find(driver, "#train-class").send_keys("star")
    # A point prompt on the first image, drawn by a click on its canvas (at its centre: on the star).
    find(driver, "#train-images .train-image canvas").click()
    assert (
        Select(find(driver, "#train-images .train-image select.tool")).first_selected_option.get_attribute("value")
        == "point"
    )
    steps = find(driver, "#opt-max_train_steps")
    assert steps.get_attribute("value") == "500", "the option shows the schema's default"
    steps.clear()
    steps.send_keys("5")
    batch = find(driver, "#opt-batch_size")
    batch.clear()
    batch.send_keys("1")
    find(driver, "#train-submit").click()
    bar = wait(
        driver, "the training progress bar", lambda d: finds(d, "#train-progress") and find(d, "#train-progress")
    )
    seen: list[str] = []

    def reached_100(d: webdriver.Chrome) -> bool:
        label = bar.find_element(By.CSS_SELECTOR, ".label").text
        if not seen or seen[-1] != label:
            seen.append(label)
        return label == "100%" and bool(finds(d, "#train-done"))

    wait(driver, "training progress at 100%", reached_100, timeout=180)
    assert bar.get_attribute("aria-valuenow") == "100"
    # Live: the bar showed the job before it finished and took several events of its stream on the way.
    assert seen[0] != "100%" and int(bar.get_attribute("data-updates") or 0) >= 3, seen
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", bar)
    shot(driver, "train")
    train_job_id = find(driver, "#train-job").text
    trained = api.get(f"/v1/jobs/{train_job_id}").json()
    assert trained["status"] == "succeeded" and trained["input"]["options"]["max_train_steps"] == 5
    assert trained["input"]["mask_prompts"][0]["point"] is not None and trained["input"]["mask_prompts"][1] is None
    assert len(trained["input"]["images"]) == 3

    # ---- the concept: images with masks outlined and their source, attention in mask --------------------------
    concept_id = trained["output"]["concept_id"]
    fragments["concept"] = f"/concepts/{concept_id}"
    timings["concept"] = open_page(driver, stack, fragments["concept"])
    wait(driver, "three outlined masks", lambda d: len(finds(d, "#training-images canvas.mask-overlay.drawn")) == 3)
    sources = [e.text for e in finds(driver, "#training-images .mask-source")]
    # Each label is the source the training reports (tiny's random SAM finds nothing on its own: whole image).
    labels = {
        "user": "user mask",
        "point": "SAM, point prompt",
        "box": "SAM, box prompt",
        "auto": "SAM, automatic",
        "whole_image": "whole image",
    }
    reported = trained["output"]["diagnostics"]["mask_sources"]
    assert reported[0] == "point" and sources == [labels[s] for s in reported], (sources, reported)
    overall = find(driver, "#attention-overall").text
    assert overall.endswith("%"), overall
    assert "×" in find(driver, "#diagnostics .bars").text
    assert finds(driver, "#diagnostics svg.chart path"), "the training's loss curve is drawn"
    driver.execute_script("document.getElementById('training-images').scrollIntoView()")
    shot(driver, "concept")
    fragments["concepts"] = "/concepts"
    timings["concepts"] = open_page(driver, stack, fragments["concepts"])
    names = {e.get_attribute("data-name") for e in finds(driver, "#concept-list .concept-card")}
    assert {"console-star", "api-ring"} <= names, names
    shot(driver, "concepts")

    # ---- generate: two concepts, completion, a style; stage-1 and styled images with masks -------------------
    wait_job(api, ring["id"], ("succeeded",))
    fragments["generate"] = "/generate"
    timings["generate"] = open_page(driver, stack, fragments["generate"])
    prompt = find(driver, "#gen-prompt")
    prompt.send_keys("a photo of <cons")
    completion = wait(
        driver,
        "the concept completion",
        lambda d: find(d, "#gen-complete").is_displayed() and find(d, "#gen-complete"),
    )
    assert "<console-star>" in completion.text
    prompt.send_keys(Keys.TAB)
    prompt.send_keys(" and <api-ring> on a table")
    assert prompt.get_attribute("value") == "a photo of <console-star> and <api-ring> on a table"
    assert len(finds(driver, "#gen-concepts .concept-row")) == 2
    assert Select(find(driver, "#gen-fusion")).first_selected_option.text == "conductor"
    find(driver, "#gen-seed").send_keys("7")
    find(driver, "#gen-num-inference-steps").send_keys("3")
    find(driver, "#gen-style").send_keys(png_file(tmp_path, "style.png", style_png()))
    find(driver, "#gen-submit").click()
    result = wait(
        driver,
        "the generation result",
        lambda d: finds(d, "#gen-results .result-set[data-job]") and find(d, "#gen-results .result-set[data-job]"),
        timeout=180,
    )
    figures = result.find_elements(By.CSS_SELECTOR, "figure")
    assert len(figures) == 2, "stage-1 and styled images side by side"
    assert "stage 1 (conductor)" in figures[0].text and "styled" in figures[1].text
    wait(
        driver,
        "both images loaded",
        lambda d: all(
            d.execute_script("return arguments[0].naturalWidth", f.find_element(By.CSS_SELECTOR, "img.base")) == 64
            for f in figures
        ),
    )
    wait(
        driver,
        "two concept masks on each image",
        lambda d: len(result.find_elements(By.CSS_SELECTOR, "canvas.mask-overlay.drawn")) == 4,
    )
    gen_job_id = result.get_attribute("data-job")
    generated = api.get(f"/v1/jobs/{gen_job_id}").json()
    assert generated["input"]["seed"] == 7 and generated["input"]["style"] is not None
    assert generated["output"]["images"][0]["file_id"] != generated["output"]["stage1_images"][0]["file_id"]
    # The overlays are the job's masks: each canvas holds coloured pixels exactly where its mask is white.
    toggle = result.find_element(By.CSS_SELECTOR, 'input.mask-toggle[data-group="0"]')
    toggle.click()
    hidden = result.find_elements(By.CSS_SELECTOR, 'canvas.mask-overlay[data-group="0"]')
    assert hidden and all(not c.is_displayed() for c in hidden)
    assert all(c.is_displayed() for c in result.find_elements(By.CSS_SELECTOR, 'canvas.mask-overlay[data-group="1"]'))
    toggle.click()
    assert all(c.is_displayed() for c in hidden)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", result)
    shot(driver, "generate")

    # ---- the same seed with the other fusion method, in one click ---------------------------------------------
    result.find_element(By.CSS_SELECTOR, 'button.same-seed[data-fusion="regional"]').click()
    regional = wait(
        driver,
        "the regional result",
        lambda d: (
            finds(d, '#gen-results .result-set[data-fusion="regional"]')
            and find(d, '#gen-results .result-set[data-fusion="regional"]')
        ),
        timeout=180,
    )
    wait(
        driver,
        "the regional masks",
        lambda d: len(regional.find_elements(By.CSS_SELECTOR, "canvas.mask-overlay.drawn")) == 4,
    )
    other = api.get(f"/v1/jobs/{regional.get_attribute('data-job')}").json()
    assert other["input"]["seed"] == 7 and other["input"]["fusion"] == "regional"
    assert other["input"]["prompt"] == generated["input"]["prompt"]
    driver.execute_script("window.scrollTo(0, document.getElementById('gen-results').offsetTop - 60)")
    path = shot(driver, "generate-compare")
    if os.environ.get("TESSERA_UPDATE_DOCS_SCREENSHOT") == "1":
        Image.open(path).convert("RGB").quantize(colors=128).save(DOCS_SCREENSHOT, optimize=True)

    # ---- an expired signed URL: the image reads the job again for a fresh one ----------------------------------
    img = regional.find_element(By.CSS_SELECTOR, "img.base")
    good = img.get_attribute("src")
    assert good and "signature=" in good
    expired = good.split("expires=")[0] + "expires=1&signature=" + "0" * 64
    driver.execute_script("arguments[0].src = arguments[1]", img, expired)
    wait(
        driver,
        "the refreshed image",
        lambda d: (
            img.get_attribute("data-refreshes") == "1"
            and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 64
        ),
    )
    assert img.get_attribute("src") != expired

    # ---- jobs: the list, a job's timeline, input and deliveries ----------------------------------------------
    fragments["job"] = f"/jobs/{gen_job_id}"
    timings["job"] = open_page(driver, stack, fragments["job"])
    legend = find(driver, "#job-timeline .legend").text
    assert "queue" in legend and "sampling" in legend, legend
    assert json.loads(find(driver, "#view pre").text)["seed"] == 7
    wait(driver, "the webhook deliveries", lambda d: "No webhook deliveries" in find(d, "#job-deliveries").text)
    shot(driver, "job")
    deadline = time.monotonic() + 30
    while len(api.get(f"/v1/jobs/{ring['id']}/webhook_deliveries").json()["data"]) < 2:
        assert time.monotonic() < deadline, "the webhook was not retried"
        time.sleep(0.2)
    open_page(driver, stack, f"/jobs/{ring['id']}")
    rows = wait(driver, "the delivery rows", lambda d: finds(d, "#job-deliveries tbody tr"))
    assert [r.find_elements(By.CSS_SELECTOR, "td")[2].text for r in rows] == ["500", "200"]
    assert "job.completed" in rows[0].text
    driver.execute_script("document.getElementById('job-deliveries').scrollIntoView()")
    shot(driver, "job-deliveries")

    # ---- cancel a queued job: a long training keeps the only worker busy, a generation waits behind it -------
    blocker = train_by_api(api, "blocker", "star", steps=5000)
    wait_job(api, blocker["id"], ("running",))
    queued = api.post("/v1/generations", json={"prompt": "<api-ring> alone", "num_inference_steps": 2}).json()
    assert queued["status"] == "queued"
    fragments["jobs"] = "/jobs"
    timings["jobs"] = open_page(driver, stack, fragments["jobs"])
    Select(find(driver, "#jobs-status")).select_by_value("queued")
    row = wait(
        driver,
        "the queued job's row",
        lambda d: (
            finds(d, f'tr.job-row[data-job="{queued["id"]}"]') and find(d, f'tr.job-row[data-job="{queued["id"]}"]')
        ),
    )
    shot(driver, "jobs")
    row.find_element(By.CSS_SELECTOR, "button.cancel").click()
    assert wait_job(api, queued["id"], ("canceled",), timeout=10)["status"] == "canceled"
    wait(
        driver, "the row gone from the queued filter", lambda d: not finds(d, f'tr.job-row[data-job="{queued["id"]}"]')
    )
    api.post(f"/v1/jobs/{blocker['id']}/cancel")
    wait_job(api, blocker["id"], ("canceled",))

    # ---- every page within the budget: a page over it is loaded twice more and keeps its best time, since other
    # processes on the machine (make test runs two test workers) only ever add to a measurement --------------------
    for name, fragment in fragments.items():
        for _ in range(2):
            if timings[name] < PAGE_BUDGET_MS:
                break
            timings[name] = min(timings[name], open_page(driver, stack, fragment))
    slow = {page: ms for page, ms in timings.items() if ms >= PAGE_BUDGET_MS}
    assert not slow, f"pages over {PAGE_BUDGET_MS:.0f} ms: {slow}"

    # ---- a key revoked or mistyped mid-session: the sign-in form says so --------------------------------------
    driver.execute_script("sessionStorage.setItem('tessera.console.apiKey', 'revoked-key')")
    driver.get("about:blank")
    driver.get(f"{stack.url}/console#/jobs")
    error = wait(
        driver,
        "the revoked-key message",
        lambda d: find(d, "#signin-error").is_displayed() and find(d, "#signin-error"),
    )
    assert "not accepted" in error.text
    assert driver.execute_script("return sessionStorage.getItem('tessera.console.apiKey')") is None

    # ---- the key never in a URL, in storage that outlives the tab, or in the logs -----------------------------
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
    )
    assert not [u for u in urls if stack.api_key in u]
    assert driver.execute_script("return JSON.stringify(localStorage) + document.cookie").find(stack.api_key) < 0
    for log in (stack.data_dir / "logs").glob("*.log"):
        assert stack.api_key not in log.read_text(errors="replace"), log.name
    browser_log = driver.get_log("browser")
    assert not [e for e in browser_log if stack.api_key in e["message"]]
    # Only the refusals the scenario provoked reach the browser's console: 401s of the wrong keys, the 403 of the
    # tampered URL; no script error.
    unexpected = [
        e for e in browser_log if e["level"] == "SEVERE" and not any(s in e["message"] for s in ("401", "403"))
    ]
    assert not unexpected, unexpected

    # ---- the page's weight: bytes of its own files as the browser received them ---------------------------------
    driver.get("about:blank")
    driver.get(f"{stack.url}/console")
    wait(driver, "the sign-in form again", lambda d: find(d, "#signin").is_displayed())
    # Bytes the browser received for the page itself (document, script, style sheet, icon), not API data or images.
    weight = driver.execute_script(
        """const own = performance.getEntriesByType('resource')
          .filter(e => new URL(e.name).pathname.startsWith('/console'));
        return own.concat(performance.getEntriesByType('navigation')).reduce((n, e) => n + e.encodedBodySize, 0)"""
    )
    assert 0 < weight < 300 * 1024, weight
    (OUTPUT / "timings.json").write_text(json.dumps({"ready_ms": timings, "page_bytes": weight}, indent=1))
