"""Long jobs without a browser: work counted and refused before it starts, stop flags that end a job at its next
progress report, one job per session, no duplicate images in an index, stale clicks and mismatched indexes noted."""
from __future__ import annotations

import shutil
import threading

import pytest
import torch
from conftest import smooth_image
from PIL import Image

from app.ui.jobs import Jobs, StoppableProgress, queues
from ssl_core.analyses.bagssl import bag_of_crops, check_crop_sizes, crop_count, tile_boxes
from ssl_core.errors import BadRequest, Cancelled, TooMuchWork
from ssl_core.search.patch_index import PatchIndex
from ssl_core.work import WorkLimits


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, progress, desc=None, total=None, unit="steps", **kwargs) -> None:
        self.calls.append((progress, desc))


# ------------------------------------------------------------------------------------------------- work limits
def test_crop_sizes_out_of_range_are_named():
    with pytest.raises(BadRequest, match=r"Crop size 500 is larger than the image .*96x144 px.*1 to 96"):
        check_crop_sizes([16, 500], 96, 144)
    with pytest.raises(BadRequest, match=r"at least 1 pixel, not 0, -4"):
        check_crop_sizes([0, -4], 96, 144)
    assert check_crop_sizes([32, 16, 32, 96], 96, 144) == [16, 32, 96]


def test_crop_count_is_every_forward_pass_of_a_bag_of_crops():
    assert crop_count([1], 96, 96) == 96 * 96 + 2
    assert crop_count([32, 48, 96], 96, 144) == len(tile_boxes(96, 144, 32)) + len(tile_boxes(96, 144, 48)) + 2


def test_work_over_the_limit_is_refused_with_the_count_and_the_limit():
    limits = WorkLimits(forward_passes=100)
    assert limits.check("A map", 100, "Map fewer.") == 100
    with pytest.raises(TooMuchWork, match=r"A map would take 9,218 forward passes, more than the 100 .* Map fewer\."):
        limits.check("A map", 9218, "Map fewer.")
    with pytest.raises(TooMuchWork, match="more than the 10 one job"):
        limits.check("The Lab", 11, "Fewer scenes.", limit=10)


# ------------------------------------------------------------------------------------------------- stopping
def test_a_stopped_job_raises_cancelled_at_its_next_progress_report(tiny_encoder):
    jobs, recorder = Jobs(), _Recorder()
    image = Image.fromarray(smooth_image(96, 96, seed=2))
    reports = []
    with pytest.raises(Cancelled, match="BagSSL job was stopped"):
        with jobs.run("session-a", "BagSSL") as flag:
            progress = StoppableProgress(recorder, flag, "BagSSL")

            def report(done: int, total: int) -> None:
                reports.append(done)
                if len(reports) == 2:
                    assert jobs.stop("session-a")
                progress((done, total), desc="crops")
            bag_of_crops(tiny_encoder, image, [8], progress=report)  # 144 crops: 9 batches
    assert reports == [16, 32] and len(recorder.calls) == 1  # ended at the report after the stop
    assert jobs.running() == [] and not jobs.stop("session-a")


def test_one_job_per_session_and_sessions_do_not_wait_for_each_other():
    jobs = Jobs()
    with jobs.run("a", "map"):
        with pytest.raises(BadRequest, match="Your map job is still running"):
            with jobs.run("a", "BagSSL"):
                pass
        with jobs.run("b", "BagSSL"):
            assert sorted(jobs.running()) == ["BagSSL", "map"]
        jobs.stop("a")
        with jobs.run("a", "BagSSL"):  # a job asked to stop no longer holds its session
            assert jobs.running() == ["BagSSL"]


def test_stop_from_another_thread_ends_a_running_loop_quickly():
    jobs, recorder = Jobs(), _Recorder()
    started, steps = threading.Event(), []

    def work() -> None:
        with pytest.raises(Cancelled), jobs.run("s", "index build") as flag:
            progress = StoppableProgress(recorder, flag, "index build")
            for step in range(10_000):
                started.set()
                steps.append(step)
                progress((step, 10_000))
                threading.Event().wait(0.001)

    thread = threading.Thread(target=work)
    thread.start()
    started.wait(5)
    assert jobs.stop("s")
    thread.join(2)
    assert not thread.is_alive() and len(steps) < 10_000


def test_jobs_and_views_have_their_own_queues():
    views, jobs = queues(1)
    assert views.id != jobs.id and views.limit >= 2 and jobs.limit >= 2
    assert jobs.options() == {"concurrency_id": "jobs", "concurrency_limit": jobs.limit}


# ------------------------------------------------------------------------------------------------- the index
def test_copies_of_indexed_images_are_not_added_again(tiny_encoder, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 80, seed=i)).save(first / f"{i}.png")
    index, report = PatchIndex.build([first], tiny_encoder)
    count = len(index)
    shutil.copytree(first, second)  # the same pictures under other names, as the app writes them for each build
    shutil.copy(first / "0.png", second / "0-again.png")
    report = index.add([second], tiny_encoder)
    assert report.added == [] and len(report.duplicates) == 4 and len(index) == count and len(index.images) == 3
    assert "4 copies of indexed images left out" in report.summary()

    fresh, report = PatchIndex.build([second], tiny_encoder)  # copies within one build: the first one only
    assert len(fresh.images) == 3 and len(report.duplicates) == 1 and len(fresh) == count
    query = fresh.embed_query(tiny_encoder, Image.open(first / "1.png").convert("RGB"))
    hits = fresh.search_patch(query, 2, 2, k=5, exclude_query_image=True)
    assert query.image_index is not None and all(hit.image_index != query.image_index for hit in hits)


# ------------------------------------------------------------------------------------------------- the app's callbacks
@pytest.fixture(scope="module")
def app():
    from app.ui.app import PatchLensApp
    from app.ui.state import AppConfig

    return PatchLensApp(AppConfig(default_model="random-tiny"))


def test_a_failed_model_switch_puts_the_controls_back(app):
    from app.ui.tabs.inspect import InspectTab

    tab = InspectTab(app)
    loaded = ["random-tiny", None, "", 0]
    with pytest.warns(UserWarning, match="image size|short side|The model stays random-tiny"):
        out = tab.model_status("random-tiny", None, "", 5, loaded)  # 5 px: out of range
    assert out[:4] == tuple(loaded) and out[-1] == loaded
    out = tab.model_status("random-tiny", None, "", 64, loaded)
    assert out[-1] == ["random-tiny", None, "", 64] and "random-tiny" in out[4]
    with pytest.raises(BadRequest):  # nothing else loaded to go back to: the error itself
        tab.model_status("random-tiny", None, "", 5, ["random-tiny", None, "", 5])


def test_a_click_on_another_grid_is_dropped_not_an_error(app):
    from app.ui.state import LoadedImage
    from app.ui.tabs.inspect import InspectTab

    tab = InspectTab(app)
    images = [LoadedImage("a.png", Image.fromarray(smooth_image(96, 144, seed=1)))]
    tokens_and_drawing = ("final (normed)", "block output", "patch grid", False)
    shown = tab.similarity(images, ("a.png", 0, 17, (12, 18)), *tokens_and_drawing, "random-tiny", None, "", 0)
    assert shown.galleries["maps"]
    stale = tab.similarity(images, ("a.png", 0, 17, (12, 18)), *tokens_and_drawing, "random-tiny", None, "", 16)
    assert not stale.galleries and "Click a patch" in stale.markdown


def test_an_index_of_another_model_is_a_gallery_note(app, tiny_encoder, tmp_path):
    from app.ui.state import LoadedImage
    from app.ui.tabs.gallery import GalleryTab

    Image.fromarray(smooth_image(64, 80, seed=3)).save(tmp_path / "g.png")
    index, _ = PatchIndex.build([tmp_path / "g.png"], tiny_encoder)
    images = [LoadedImage("q.png", Image.fromarray(smooth_image(64, 80, seed=4)))]
    note = GalleryTab(app).show_query(images, "q.png", index, "random-tiny", None, "", 64)
    assert "this index was built with" in note.markdown and not note.pictures
    assert GalleryTab(app).show_query(images, "q.png", index, "random-tiny", None, "", 0).pictures


def test_a_custom_mask_of_another_grid_is_noted(tiny_encoder):
    from app.views.reconstruct import context_drift_view

    image = Image.fromarray(smooth_image(96, 96, seed=5))
    note = context_drift_view(tiny_encoder, image, "custom", 0.75, 0, frozenset({(20, 20), (1, 1)}))
    assert "1 of its patches lie outside" in note.markdown and not note.pictures
    assert context_drift_view(tiny_encoder, image, "custom", 0.75, 0, frozenset({(1, 1)})).pictures


def test_features_of_a_batch_do_not_keep_the_whole_batch_alive(tiny_encoder):
    images = [Image.fromarray(smooth_image(64, 64, seed=s)) for s in range(4)]
    features = tiny_encoder.forward_batch(torch.stack([tiny_encoder.to_tensor(tiny_encoder.prepare(i)) for i in images]),
                                          layers=(1,), attention=True)
    for f in features:  # what the feature cache counts is what each item holds
        tensors = [f.patch_tokens, f.prefix_tokens, f.image_embedding, f.attention, *f.layer_tokens.values()]
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)
