"""Two jobs compared from hand-made aggregates: accuracies, differences, what changed, the confusion diff;
no database."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import PROJECT_ROOT
from shared.jobs.comparison import Comparison
from shared.jobs.statistics import UNLABELLED
from web.heatmap import difference_heatmap


def job(job_id: int, done: int, status: str = "done", model: str = "m") -> dict:
    return {"id": job_id, "model_version": model, "status": status, "total_images": done, "done_count": done}


# 10 shared images: six 7s (A: 5 right, one taken for 1; B fixes it and breaks another into a 2),
# three 4s (A right on all; B takes one for a 9), one unlabelled image (A says 3, B says 8).
TRIPLES = [
    (7, 7, 7, 4),
    (7, 1, 7, 1),  # fixed
    (7, 7, 2, 1),  # broken
    (4, 4, 4, 2),
    (4, 4, 9, 1),  # broken
    (UNLABELLED, 3, 8, 1),
]


@pytest.fixture
def compared() -> Comparison:
    return Comparison.of(job(1, 12, model="old"), job(2, 10, model="new"), TRIPLES)


def test_accuracy_of_each_on_the_labelled_shared_images(compared):
    assert (compared.shared, compared.labelled) == (10, 9)
    assert compared.accuracy_a == pytest.approx(8 / 9)  # 5 sevens and 3 fours
    assert compared.accuracy_b == pytest.approx(7 / 9)  # 5 sevens and 2 fours


def test_differing_predictions_include_the_unlabelled_images(compared):
    assert compared.differing == 4
    assert compared.totals() == {"fixed": 1, "broken": 2, "changed": 3, "unlabelled_changed": 1}


def test_changes_name_what_a_predicted_and_what_b_predicts_instead_most_first():
    compared = Comparison.of(job(1, 9), job(2, 9), [(5, 5, 6, 3), (UNLABELLED, 0, 6, 1), (8, 8, 3, 3), (8, 8, 8, 2)])
    assert compared.changes() == [(5, 6, 3), (8, 3, 3), (0, 6, 1)]


def test_per_true_label_counts_fixed_broken_and_changed(compared):
    rows = {row["digit"]: row for row in compared.per_true_label()}
    assert rows[7] == {"digit": 7, "images": 6, "a_correct": 5, "b_correct": 5, "fixed": 1, "broken": 1, "changed": 2}
    assert rows[4] == {"digit": 4, "images": 3, "a_correct": 3, "b_correct": 2, "fixed": 0, "broken": 1, "changed": 1}
    assert rows[0] == {"digit": 0, "images": 0, "a_correct": 0, "b_correct": 0, "fixed": 0, "broken": 0, "changed": 0}


def test_both_wrong_in_different_ways_is_changed_but_neither_fixed_nor_broken():
    compared = Comparison.of(job(1, 1), job(2, 1), [(9, 4, 7, 1)])
    assert compared.per_true_label()[9] == {
        "digit": 9,
        "images": 1,
        "a_correct": 0,
        "b_correct": 0,
        "fixed": 0,
        "broken": 0,
        "changed": 1,
    }
    assert compared.accuracy_a == compared.accuracy_b == 0.0


def test_confusion_matrices_and_their_difference_b_minus_a(compared):
    a, b, diff = compared.confusion_a, compared.confusion_b, compared.confusion_diff
    assert a[7, 7] == 5 and a[7, 1] == 1 and a[4, 4] == 3 and a.sum() == 9
    assert b[7, 7] == 5 and b[7, 2] == 1 and b[4, 4] == 2 and b[4, 9] == 1 and b.sum() == 9
    expected = np.zeros((10, 10), dtype=np.int64)
    expected[7, 1], expected[7, 2], expected[4, 4], expected[4, 9] = -1, 1, -1, 1
    assert (diff == expected).all()
    assert diff.sum() == 0  # the same images on both sides


def test_repeated_triples_add_up():
    assert Comparison.of(job(1, 4), job(2, 4), [(2, 2, 2, 1), (2, 2, 2, 3)]).counts[3, 2, 2] == 4


def test_images_only_one_job_predicted_are_counted_apart(compared):
    assert compared.only_in(compared.job_a) == 2 and compared.only_in(compared.job_b) == 0
    summary = compared.as_json()
    assert summary["a"]["only_here"] == 2 and summary["b"]["model_version"] == "new"


def test_no_shared_image_is_said_plainly_and_is_no_error():
    apart = Comparison.of(job(1, 5), job(2, 7), [])
    assert (apart.shared, apart.differing, apart.accuracy_a, apart.accuracy_b) == (0, 0, None, None)
    assert apart.note() == (
        "the two jobs share no images: job 1's 5 predictions and job 2's 7 are of different images,"
        " so there is nothing to compare"
    )
    waiting = Comparison.of(job(1, 5), job(2, 0, status="queued"), [])
    assert waiting.note() == "no image has a prediction in both jobs yet (job 2 is not done)"


def test_the_json_holds_every_number_as_plain_values(compared):
    summary = compared.as_json()
    assert (summary["shared_images"], summary["labelled"], summary["differing"], summary["note"]) == (10, 9, 4, None)
    assert summary["a"]["accuracy"] == pytest.approx(8 / 9) and summary["b"]["accuracy"] == pytest.approx(7 / 9)
    assert summary["changes"][0] == {"from": 1, "to": 7, "images": 1}
    assert summary["confusion_diff"][4][9] == 1 and type(summary["confusion_diff"][4][9]) is int
    assert len(summary["per_true_label"]) == 10


def test_the_versions_that_made_the_predictions_are_in_the_json():
    compared = Comparison.of(
        job(1, 1, model="v1"), {**job(2, 1), "model_version": None}, [(1, 1, 1, 1)], ["v1"], ["v2"]
    )
    summary = compared.as_json()
    assert (summary["a"]["model_version"], summary["a"]["prediction_versions"]) == ("v1", ["v1"])
    assert (summary["b"]["model_version"], summary["b"]["prediction_versions"]) == (None, ["v2"])


def test_the_diff_is_shaded_by_what_it_means_green_where_b_does_better_red_where_worse():
    diff = np.array([[2, -2], [4, -4]])  # more right and fewer 0s taken for 1s; more 1s taken for 0s, fewer right
    cells = difference_heatmap(diff)
    assert [[cell.count for cell in row] for row in cells] == diff.tolist()
    assert [[cell.shade for cell in row] for row in cells] == [
        ["heat-right-7", "heat-right-7"],
        ["heat-wrong-10", "heat-wrong-10"],
    ]
    assert difference_heatmap(np.zeros((2, 2), dtype=int))[0][0].shade == "heat-right-0"  # no change: blank
    stylesheet = (PROJECT_ROOT / "web" / "static" / "style.css").read_text()
    assert all(f".heatmap td.{cell.shade} " in stylesheet for row in cells for cell in row)
