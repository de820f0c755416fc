"""The leaderboard page: structure, self-contained images (each one decoded), pixel-exact grids beside real
data, the plots and their reference lines, the markdown's image links; and a headless-browser check."""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from genbench import paths
from genbench.bench import leaderboard, plots
from genbench.bench.record import ResultRecord, write_record
from genbench.metrics import table as T

ROOT = Path(__file__).resolve().parents[1]


def _record(model, family, bpd, fid, dataset="digits", profile="smoke", **extra):
    metrics = {
        T.BPD: {"value": bpd, "stderr": 0.01, "n": 100, "kind": "bound", "estimator": "iwae", "K": 8}
        if bpd is not None else {"available": False, "reason": "implicit model: no density"},
        T.FID: {"value": fid, "n": 50, "reference_split": "test"},
        T.KID: {"value": 0.01, "std": 0.001, "n": 50}, T.PRECISION: {"value": 0.5}, T.RECALL: {"value": 0.4},
        T.FID_FLOOR: {"value": 5.0, "n": 50, "protocol": "train subset vs test"},
        T.EXTRACTION_RATE: {"value": 0.0, "n": 50, "k": 10},
        T.CLASS_COVERAGE: {"value": 0.2, "classes_covered": 9, "num_classes": 10, "n": 50, "n_reference": 50,
                           "sample_histogram": [0.1] * 10, "real_histogram": [0.08, 0.12] * 5},
        T.SAMPLING: {"images_per_s": 10.0, "sampler": f"{model}-sampler", "steps": 50},
        **extra.pop("metrics", {}),
    }
    train = {"wall_time_s": 60.0, "images_per_s": 100.0, "steps": 10,
             "curves": {"train/loss": [[5, 1.0]], "val/bpd": [[5, 2.0], [10, 1.8]]},
             "quality_curve": [{"images_seen": n, "train_flops": 1e12 * n, "bpd": 3.0 - n / 100, "domain_fd": 50.0 / n,
                                "class_tv": 0.5, "n_samples": 64, "n_likelihood": 64} for n in (1, 3, 10)]}
    return ResultRecord(run_id=f"{dataset}-{profile}-{model}-seed0", model=model, family=family, dataset=dataset,
                        profile=profile, seed=0, metrics=metrics, params=12345, train=train, evaluation={},
                        data={"shape": [1, 8, 8]}, model_info={}, environment={}, config={},
                        artifacts={"sample_grid": f"samples/{dataset}-{profile}-{model}-seed0.png"}, **extra)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("board")
    res = tmp / "benchmarks" / "results"
    sweep = [{"steps": 10, "fid": 80.0, "n": 50}, {"steps": 50, "fid": 60.0, "n": 50}]
    records = [_record("ddpm", "diffusion", 1.5, 60.0, metrics={T.FID_VS_STEPS: sweep}),
               _record("vae", "vae", 1.2, 80.0, metrics={T.fid_variant("decoder_draws"): {
                   "value": 95.25, "n": 50, "reference_split": "test", "variant": "decoder_draws",
                   "description": "every pixel drawn from p(x|z)"}}),
               _record("gan", "gan", None, 40.0),
               _record("vae", "vae", 1.3, 90.0, profile="quick")]
    gen = torch.Generator().manual_seed(0)
    for r in records:
        write_record(r, res)
        plots.save_sample_grid(torch.randint(0, 17, (64, 1, 8, 8), dtype=torch.uint8, generator=gen),
                               res / r.artifacts["sample_grid"], levels=17)
    (tmp / "benchmarks" / leaderboard.ASSETS_DIR).mkdir(parents=True)
    stale = tmp / "benchmarks" / leaderboard.ASSETS_DIR / "gone-from-the-records.png"
    stale.write_bytes(b"x")
    md, page = leaderboard.build(res, tmp / "benchmarks", paths.reference_file())
    return {"md": md, "page": page, "html": page.read_text(), "results": res, "stale": stale}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.sections, self.nav, self.imgs, self.headers, self.cells = [], [], [], [], [], []
        self._in = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("meta", "img", "br"):
            self.stack.append(tag)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "a" and "nav" in self.stack:
            self.nav.append(a.get("href"))
        if tag == "img":
            self.imgs.append(a)
        if tag == "th":
            self.headers.append("")
        if tag == "td":
            self.cells.append({"attrs": a, "text": ""})

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()

    def handle_data(self, data):
        if "th" in self.stack and "thead" in self.stack:
            self.headers[-1] += data
        elif "td" in self.stack and self.cells:
            self.cells[-1]["text"] += data


def _parse(text):
    page = _Page()
    page.feed(text)
    assert not page.stack
    return page


def test_page_structure_sections_navigation_headers_and_sort_values(board):
    page = _parse(board["html"])
    assert page.sections == ["digits-quick", "digits-smoke"]  # one section per dataset x profile
    assert page.nav == ["#digits-quick", "#digits-smoke"]
    for label in ("FID ↓", "bits/dim ↓", "precision ↑", "recall ↑", "class TV† ↓", "train img/s ↑"):
        assert any(h.startswith(label) for h in page.headers), label
    assert any(h == "precision ↑fraction" for h in page.headers)  # the unit from the metric table under the label
    fid_cells = [c for c in page.cells if "c-fid" in c["attrs"].get("class", "")]
    assert sorted(float(c["attrs"]["data-v"]) for c in fid_cells) == [5.0, 5.0, 40.0, 60.0, 80.0, 90.0]  # 2 floors
    assert "<script>" in board["html"] and "addEventListener('click'" in board["html"]
    # the samplers, citations and protocols are on the page, not in tooltips
    assert "Samplers: ddpm: ddpm-sampler, steps 50" in board["html"]
    assert "Published rows: citations and protocols" not in board["html"]  # no published digits row
    assert "<link" not in board["html"] and "src='http" not in board["html"]  # nothing fetched from elsewhere


def test_tie_aware_bolding_in_html_and_markdown(board):
    smoke = board["html"].split("id='digits-smoke'")[1]
    # extraction rate: every row reads 0.000 -> no row is bold; FID: the GAN alone is best
    assert not re.search(r"c-extraction_rate[^>]*><b>", smoke)
    assert re.search(r"data-v='40.0'><b>40.0</b>", smoke)
    md = board["md"].read_text()
    gan_row = next(line for line in md.splitlines() if "| gan |" in line)
    assert "**40.0 @50 vs test**" in gan_row and "**0.000" not in md


def test_every_embedded_image_decodes_and_grids_are_pixel_exact_beside_real_data(board, digits):
    page = _parse(board["html"])
    decoded = []
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            decoded.append((img.get("alt"), im.size, im.convert("L")))
    # smoke: real data + 3 models + 5 plots (quality vs compute, FID vs bpd, FID vs steps, classes, curves);
    # quick: real data + 1 model + 4 plots (no sampler sweep there)
    assert len(decoded) == 9 + 6
    grids = [d for d in decoded if d[0] in ("real data", "ddpm (diffusion)", "vae", "gan")]
    assert len(grids) == 4 + 2
    for _, size, _ in grids:
        assert size == (8 * 9 + 1, 8 * 9 + 1)  # 8x8 tiles of 8x8 pixels, 1-pixel padding: one PNG pixel each
    # the real-data grid is the first test images, pixel for pixel (17 grey levels scaled to 0..255)
    real = next(im for alt, _, im in decoded if alt == "real data")
    first = digits.split("test")[0][0, 0].float()
    tile = torch.tensor(list(real.crop((1, 1, 9, 9)).getdata()), dtype=torch.float32).view(8, 8)
    assert torch.equal(tile, torch.round(first / 16 * 255))
    # shown at a whole-number zoom, nearest neighbour, with its metrics underneath
    assert "image-rendering:pixelated" in board["html"]
    assert "style='width:438px;height:438px'" in board["html"]  # 73 px x 6
    assert "FID 40.0 @50 · no density" in board["html"] and "FID 60.0 @50 · 1.500 bits/dim (bound)" in board["html"]


def test_markdown_links_its_images_relatively_and_stale_assets_go(board):
    md = board["md"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    out_dir = board["md"].parent
    assert len(links) == 15 and all(not Path(link).is_absolute() for link in links)
    assert all((out_dir / link).is_file() for link in links)
    assert "leaderboard_files/digits-smoke-fid_vs_steps.png" in links
    assert "results/samples/digits-smoke-gan-seed0.png" in links and "leaderboard_files/digits-real-test.png" in links
    assert not board["stale"].exists()


def test_sample_variants_are_noted_beside_the_declared_sampler(board):
    note = ("vae with decoder_draws (every pixel drawn from p(x|z)): FID 95.2 @50 vs test")
    assert note in board["md"].read_text() and note in board["html"]
    assert "FID column is the sampler the config declares" in board["md"].read_text()


def test_extra_sections_are_appended_and_linked(board):
    tables = leaderboard.build_tables(board["results"], paths.reference_file())
    text = leaderboard.render_html(tables, (("restoration", "restoration", "<h2>Restoration</h2><p>x</p>"),))
    page = _parse(text)
    assert page.sections[-1] == "restoration" and page.nav[-1] == "#restoration"


def test_figures_have_markers_reference_lines_and_plain_log_ticks():
    curves = {"a": [{"train_flops": 2e12, "bpd": 2.0}], "b": [{"train_flops": 3e12, "bpd": 1.5},
                                                               {"train_flops": 9e12, "bpd": 1.2}]}
    fig = plots.quality_vs_compute_figure(curves, [("bpd", "bits/dim")], {"bpd": (1.69, "histogram")})
    ax = fig.axes[0]
    assert all(line.get_marker() == "o" for line in ax.lines[:2])  # the one-point curve "a" is visible
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [1.69]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", label) for label in labels), labels  # never 2×10⁰
    fig = plots.bpd_fid_figure([("ddpm", 1.7, 100.0), ("gan", None, 50.0)], 1.69, 20.3)
    styles = sorted((line.get_linestyle(), tuple(line.get_xdata()), tuple(line.get_ydata())) for line in fig.axes[0].lines)
    assert ("--", (1.69, 1.69), (0, 1)) in styles and ("--", (0, 1), (20.3, 20.3)) in styles  # baseline, floor
    assert (":", (0, 1), (50.0, 50.0)) in styles  # the GAN's FID without a density
    fig = plots.training_curves_figure({"gan": {"train/loss": [[1, 0.5]], "val/bpd": []},
                                        "vae": {"train/loss": [[1, 3.0]], "val/bpd": [[1, 1.5]]}})
    assert [ax.get_title() for ax in fig.axes] == ["gan: its own loss", "vae: its own loss", "val/bpd (all models)"]


def test_committed_page_is_self_contained_and_every_image_decodes():
    text = (ROOT / "benchmarks" / "leaderboard.html").read_text()
    srcs = re.findall(r"<img src='([^']*)'", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            im.load()
    assert 'data-images-decoded' in text  # the page reports its decoded images to a browser test


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium); the PIL "
                                              "decoding tests above still check every image")
def test_page_in_headless_chromium_loads_decodes_every_image_and_sorts(board, tmp_path):
    page = _parse(board["html"])
    # click the FID header of the smoke table, then record the order of its model cells
    probe = tmp_path / "probe.html"
    probe.write_text(board["html"].replace("</body>", """<script>
window.addEventListener('load',function(){var t=document.querySelector('#digits-smoke table');
var th=Array.prototype.find.call(t.tHead.rows[0].cells,function(c){return c.textContent.indexOf('FID')===0;});
th.click();document.body.setAttribute('data-order',Array.prototype.map.call(t.tBodies[0].rows,
function(r){return r.cells[2].textContent;}).join(','));});</script></body>"""))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n = len(page.imgs)
    assert f'data-images-decoded="{n}/{n}"' in body
    assert 'data-order="real vs real (train subset vs test),gan,ddpm,vae,per-pixel histogram (fit on train)"' in body
    shot = tmp_path / "page.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,3000", board["page"].as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1400, 3000) and len(im.convert("L").getcolors(1 << 16) or []) > 50  # drawn, not blank


def test_points_dataset_builds_with_scatter_and_without_image_plots(tmp_path):
    res = tmp_path / "results"
    rec = ResultRecord(run_id="eight_gaussians-smoke-realnvp-seed0", model="realnvp", family="flow",
                       dataset="eight_gaussians", profile="smoke", seed=0,
                       metrics={T.NLL_NATS: {"value": 3.1, "n": 100}, T.SAMPLING: {"images_per_s": 1e4}},
                       params=100, train={"wall_time_s": 1.0, "images_per_s": 10.0}, evaluation={},
                       data={"shape": [2], "kind": "points"}, model_info={}, environment={}, config={},
                       artifacts={"sample_grid": "samples/eight_gaussians-smoke-realnvp-seed0.png"})
    write_record(rec, res)
    plots.save_sample_grid(torch.randn(64, 2), res / rec.artifacts["sample_grid"], title="points")
    _, page = leaderboard.build(res, tmp_path)
    text = page.read_text()
    assert "a scatter plot of the samples" in text and "alt='real data'" not in text  # no real grid for points
    assert "FID against sampler steps: no record" in text and "-fid_vs_bpd" not in text


def test_extraction_figures_are_shown_beside_their_rows(tmp_path):
    res = tmp_path / "benchmarks" / "results"
    rec = _record("gan", "gan", None, 40.0)
    rec.metrics[T.EXTRACTION_RATE].update(n_flagged=3, threshold=0.42)
    rec.artifacts["extraction_figure"] = "extraction/digits-smoke-gan-seed0.png"
    write_record(rec, res)
    plots.save_sample_grid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), res / rec.artifacts["sample_grid"], levels=17)
    figure = res / rec.artifacts["extraction_figure"]
    figure.parent.mkdir(parents=True)
    Image.new("L", (300, 120), 128).save(figure)
    md, page = leaderboard.build(res, tmp_path / "benchmarks", paths.reference_file())
    text = md.read_text()
    assert "### Closest samples to the training set" in text
    assert "**gan**: 3 of 50 samples flagged (d1/dk below 0.42)" in text
    assert "![gan](results/extraction/digits-smoke-gan-seed0.png)" in text
    html = page.read_text()
    assert "Closest samples to the training set" in html
    shown = [a for a in _parse(html).imgs if a.get("alt") == "gan" and "width:300px" in a.get("style", "")]
    assert len(shown) == 1
    png = base64.b64decode(shown[0]["src"].split(",", 1)[1])
    assert png == figure.read_bytes()
