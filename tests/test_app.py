"""examples/app.py, the Gradio demo: its analysis directly, then the page itself in headless Chromium."""

import io
import os
import shutil
import socket
import tempfile
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import load_example
from dicom_factory import FOLDER_EXAMS, mammogram_dataset, write_dataset, write_dicom_folder
from modeling_mama import MamaModel, MamaProcessor
from modeling_mama.dicom import read_dicom
from modeling_mama.pipelines import ZeroShotScorer
from modeling_mama.reports import CLASS_NAMES, ReportFields

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,2600"]
EXAM = ["P1-L-CC", "P1-L-MLO", "P1-R-CC", "P1-R-MLO"]


@pytest.fixture(scope="module")
def app(tiny_mama_folder, tmp_path_factory):
    """examples/app.py imported as a Space would import it: the model comes from MAMA_MODEL."""
    saved = {name: os.environ.get(name) for name in ("MAMA_MODEL", "GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED")}
    os.environ.update(MAMA_MODEL=str(tiny_mama_folder), GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio")),
                      GRADIO_ANALYTICS_ENABLED="False")
    try:
        yield load_example("app")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    written = write_dicom_folder(root)
    no_pixels = mammogram_dataset()
    del no_pixels.PixelData
    written["no-pixels.dcm"] = write_dataset(no_pixels, root / "no-pixels.dcm")
    (root / "scan.png").write_bytes(b"this is not a PNG")
    written["scan.png"] = root / "scan.png"
    written["exam 7 right_MLO.png"] = root / "exam 7 right_MLO.png"
    written["exam 7 right_MLO.png"].write_bytes(_png_of(read_dicom(written["P1-R-MLO"]).pixels))
    return written


def _png_of(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray((pixels * 65535).round().astype(np.uint16)).save(stream, format="PNG")
    return stream.getvalue()


def expected_scores(folder, paths, task):
    """What the page must show: the batch scorer on the files, prompts from their headers."""
    scorer = ZeroShotScorer(MamaModel.from_pretrained(folder), MamaProcessor.from_pretrained(folder), task)
    images = [read_dicom(path) for path in paths]
    exam = FOLDER_EXAMS["P1"]
    fields = [ReportFields(procedure=exam["description"], age=exam["age"], laterality=image.laterality,
                           view=image.view_position) for image in images]
    return scorer(images, fields)


def test_uploads_that_cannot_be_used_are_named_with_the_reason(app, files):
    messages = {
        "notes.txt": "notes.txt: neither a DICOM file nor an image",
        "ct.dcm": "ct.dcm: not a mammogram (Modality CT).",
        "tomo.dcm": "tomo.dcm: not 2D (3 frames).",
        "no-pixels.dcm": "no-pixels.dcm: no pixel data",
        "corrupt.dcm": "corrupt.dcm: could not decode the pixel data",
        "scan.png": "scan.png: not a readable image file.",
    }
    for name, message in messages.items():
        with pytest.raises(app.UploadError) as error:
            app.load_view(files[name])
        assert str(error.value).startswith(message), str(error.value)
    view = app.load_view(files["exam 7 right_MLO.png"])
    assert (view.laterality, view.laterality_source, view.view, view.view_source) == ("R", "file name", "MLO",
                                                                                    "file name")
    dicom = app.load_view(files["P2-R-CC"])  # no laterality tag
    assert (dicom.laterality, dicom.laterality_source, dicom.fields.age) == ("R", "pixels", 47)


def test_analyse_scores_views_breasts_and_exam(app, tiny_mama_folder, files):
    demo_model = app.MamaDemo(str(tiny_mama_folder))
    paths = [str(files[name]) for name in EXAM]
    status, gallery, label, table, maps = app.analyse(demo_model, None, paths + [str(files["ct.dcm"])], "birads",
                                                      "Findings: The mammogram shows that a benign finding is present.")
    assert status.startswith("Scored 4 views") and "**Could not use** ct.dcm: not a mammogram" in status
    expected = expected_scores(tiny_mama_folder, paths, "birads")
    exam = expected.mean(axis=0)
    assert list(label) == CLASS_NAMES["birads"]
    np.testing.assert_allclose(list(label.values()), exam, atol=1e-6)
    assert table.count('data-level="view"') == 4 and table.count('data-level="breast"') == 2
    assert len(gallery) == 4 and gallery[0][0].dtype == np.uint8 and gallery[0][1] == "L CC · IM0001"
    assert len(maps) == 4 and maps[0][0].mode == "RGB" and maps[0][1].startswith("L CC · IM0001 · max similarity")

    single = app.analyse(demo_model, None, paths[:1], "density", "")
    assert single[0].startswith("Scored 1 view ") and "Type a sentence" in single[0] and single[4] is None
    assert single[3].count("<tr data-level") == 1  # one view: no breast or exam rows
    too_long = app.analyse(demo_model, None, paths[:1], "density", "dense " * 400)
    assert "The sentence cannot be used" in too_long[0] and too_long[3]  # the scores are still shown
    assert app.analyse(demo_model, None, [], "density", "")[0].startswith("Upload one mammogram")


def test_page_without_its_model_says_so(app, tmp_path):
    import gradio as gr

    page = app.build_demo(str(tmp_path / "missing-model"))
    texts = [block.value for block in page.blocks.values() if isinstance(block, gr.Markdown)]
    problem = next(text for text in texts if "could not be loaded" in text)
    assert "missing-model" in problem and "python examples/pretrain.py" in problem and "MAMA_MODEL" in problem
    assert any("Not a medical device" in text for text in texts)
    status = app.analyse(None, "`missing-model`: OSError", [], "density", "")[0]
    assert status == "**The model could not be loaded.** `missing-model`: OSError"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; "
                           ".ci/run installs it)")
def test_page_in_a_real_browser(app, tiny_mama_folder, files, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        url = f"http://127.0.0.1:{port}/"
        driver.get(url)
        upload = wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))[0]
        assert "Not a medical device" in driver.find_element(By.TAG_NAME, "body").text
        upload.send_keys("\n".join(str(files[name]) for name in EXAM))
        wait.until(lambda page: "IM0004" in page.find_element(By.ID, "upload").text)
        driver.find_element(By.CSS_SELECTOR, "#task input[value=birads]").click()
        driver.find_element(By.ID, "analyse").click()
        wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#heatmaps img")) >= 4
                   and page.find_elements(By.CSS_SELECTOR, "#score-table tbody tr"))

        # The scores on the page are the model's.
        expected = expected_scores(tiny_mama_folder, [files[name] for name in EXAM], "birads")
        rows = driver.find_elements(By.CSS_SELECTOR, "#score-table tbody tr")
        assert [row.get_attribute("data-level") for row in rows] == ["view"] * 4 + ["breast"] * 2 + ["exam"]
        shown = np.array([[float(cell.text) for cell in row.find_elements(By.CSS_SELECTOR, "td[data-class]")]
                          for row in rows])
        np.testing.assert_allclose(shown[:4], expected, atol=6e-4)  # 3 decimals on the page
        np.testing.assert_allclose(shown[4], expected[:2].mean(axis=0), atol=6e-4)
        np.testing.assert_allclose(shown[6], expected.mean(axis=0), atol=6e-4)
        predicted = CLASS_NAMES["birads"][int(np.argmax(expected.mean(axis=0)))]
        assert rows[-1].find_element(By.CSS_SELECTOR, ".prediction").text == predicted
        assert predicted in driver.find_element(By.ID, "overall").text
        assert driver.find_element(By.ID, "status").text.startswith("Scored 4 views for BI-RADS")

        # The heat maps are real pictures: a grey mammogram under a coloured overlay.
        sources = [image.get_attribute("src") for image in driver.find_elements(By.CSS_SELECTOR, "#heatmaps img")]
        for source in sources[:4]:
            assert source.startswith(url)
            with urllib.request.urlopen(source, timeout=10) as response:
                picture = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(np.int16)
            assert min(picture.shape[:2]) > 200
            assert np.abs(picture[..., 0] - picture[..., 2]).mean() > 10  # colour, not a grey placeholder
        screenshot = tmp_path / "app_exam.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("MAMA_SCREENSHOT_DIR"):
            os.makedirs(os.environ["MAMA_SCREENSHOT_DIR"], exist_ok=True)
            shutil.copy(screenshot, os.path.join(os.environ["MAMA_SCREENSHOT_DIR"], screenshot.name))
        print(f"screenshot of the demo page: {screenshot}")

        # A file that is not DICOM: a clear message on the page, never a stack trace.
        driver.get(url)
        upload = wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))[0]
        upload.send_keys(f"{files['notes.txt']}\n{files['ct.dcm']}")
        wait.until(lambda page: "ct.dcm" in page.find_element(By.ID, "upload").text.replace("\n", ""))
        driver.find_element(By.ID, "analyse").click()
        wait.until(lambda page: "Could not use" in page.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        assert "notes.txt: neither a DICOM file nor an image" in status
        assert "ct.dcm: not a mammogram (Modality CT)" in status
        assert "Traceback" not in driver.page_source and not driver.find_elements(By.CSS_SELECTOR, "#heatmaps img")
        driver.save_screenshot(str(tmp_path / "app_error.png"))
    finally:
        driver.quit()
        app.demo.close()
