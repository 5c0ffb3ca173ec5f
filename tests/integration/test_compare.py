"""Two jobs compared, by ``producer compare``, GET /api/compare and the page /compare, against a direct aggregation.

Job A is a real job: the session's worker predicts 32 stored MNIST digits (one stored with a
wrong true label, so that A gets it "wrong", two stored without a label). Job B covers 30 of
those images and 3 of its own; its predictions are written through the data layer's store
function (test data: the worker has one model), A's labels with a few chosen changes: one
fixed, two broken, one unlabelled image changed. The expected numbers come from the images'
rows joined one by one in this file, not from the aggregate under test.

The aggregate of two finished jobs is stored once computed: read back the same, per ordered
pair, never for an unfinished job, computed again when a finished job gains a prediction, and
stored without error by two requests at once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import main
from shared import images, jobs, queues
from shared.db import connection
from shared.db.connection import query
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.comparison import load_comparison
from shared.models.files import model_version
from tests.support import digits
from tests.support.services import max_job_id, prediction_batch, signed_in
from web.app import create_app

LABELLED, UNLABELLED = 30, 2
MODEL_B = "compare-test-b"


def stored_digits(conn, count: int, unlabelled: int = 0, start: int = 0) -> tuple[list[int], list[int | None]]:
    """MNIST test digits stored anew (their own image_index), the last ``unlabelled`` of them without a label."""
    digit_images, labels = digits.mnist_test_digits(count, start)
    true_labels = [int(label) for label in labels[: count - unlabelled]] + [None] * unlabelled
    first = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    rows = [
        ImageRow(encode_image(image), label, [28, 28], "train", first + k, None)
        for k, (image, label) in enumerate(zip(digit_images, true_labels, strict=True))
    ]
    return images.store.insert_images(conn, rows), true_labels


def store_job(conn, image_ids: list[int], labels: list[int]) -> int:
    """A job whose predictions are written at once through ``jobs.results.store_results``
    (before the sweeper could take it)."""
    job_id = jobs.store.create_job(conn, image_ids, MODEL_B, {"test": "compare"})
    assert jobs.results.store_results(conn, job_id, MODEL_B, prediction_batch(image_ids, labels, 0.9), []) == (
        len(image_ids),
        0,
    )
    return job_id


@pytest.fixture(scope="module")
def pair(worker, settings):
    conn = connection.connect(settings.database_url)
    ids, true_labels = stored_digits(conn, LABELLED + UNLABELLED, UNLABELLED)
    # One image stored with a wrong label: the model's (right) answer counts as A's mistake.
    wrong_label = (true_labels[5] + 1) % 10
    query(conn, "UPDATE input_data SET true_label = %s WHERE id = %s", (wrong_label, ids[5]))
    true_labels[5] = wrong_label
    selection = jobs.service.Selection(image_ids=tuple(ids))
    job_a = jobs.service.submit_job(
        conn, queues.broker.celery_app(settings), settings, selection, model_version(settings.model_path), 8
    ).id
    finished = jobs.progress.wait_for_job(conn, job_a)
    failures = query(conn, "SELECT reason FROM job_failures WHERE job_id = %s LIMIT 1", (job_a,))
    assert finished["status"] == "done" and finished["failed_count"] == 0, failures
    predicted_a = dict(
        query(conn, "SELECT input_data_id, predicted_label FROM predictions WHERE job_id = %s", (job_a,))
    )
    assert len(predicted_a) == len(ids)

    extra, _ = stored_digits(conn, 3, start=100)
    shared = ids[2:]  # ids[0] and ids[1] are A's only
    labels_b = {image_id: predicted_a[image_id] for image_id in shared}
    labels_b[ids[5]] = wrong_label  # fixed: B agrees with the stored label
    right = [
        image_id
        for image_id, label in zip(ids[6:LABELLED], true_labels[6:LABELLED], strict=True)
        if predicted_a[image_id] == label
    ]
    for image_id in right[:2]:  # broken
        labels_b[image_id] = (predicted_a[image_id] + 3) % 10
    labels_b[ids[-1]] = (predicted_a[ids[-1]] + 1) % 10  # unlabelled, changed
    b_ids = shared + extra
    job_b = store_job(conn, b_ids, [labels_b.get(image_id, 0) for image_id in b_ids])
    yield {"a": job_a, "b": job_b, "conn": conn, "extra": extra}
    conn.close()


def direct_comparison(conn, job_a: int, job_b: int) -> dict:
    """The expected numbers from the shared images' rows, one by one."""
    rows = query(
        conn,
        """
        SELECT d.true_label, a.predicted_label, b.predicted_label
        FROM predictions a JOIN predictions b ON b.input_data_id = a.input_data_id AND b.job_id = %s
        JOIN input_data d ON d.id = a.input_data_id WHERE a.job_id = %s
        """,
        (job_b, job_a),
    )
    labelled = [(true, a, b) for true, a, b in rows if true is not None]
    confusion_a, confusion_b = np.zeros((10, 10), dtype=int), np.zeros((10, 10), dtype=int)
    for true, a, b in labelled:
        confusion_a[true, a] += 1
        confusion_b[true, b] += 1
    changes = collections.Counter((a, b) for _, a, b in rows if a != b)
    return {
        "shared_images": len(rows),
        "labelled": len(labelled),
        "differing": sum(changes.values()),
        "fixed": sum(1 for true, a, b in labelled if a != true and b == true),
        "broken": sum(1 for true, a, b in labelled if a == true and b != true),
        "accuracy_a": sum(1 for true, a, _ in labelled if a == true) / len(labelled),
        "accuracy_b": sum(1 for true, _, b in labelled if b == true) / len(labelled),
        "confusion_a": confusion_a.tolist(),
        "confusion_b": confusion_b.tolist(),
        "confusion_diff": (confusion_b - confusion_a).tolist(),
        "changes": sorted(
            ({"from": a, "to": b, "images": n} for (a, b), n in changes.items()),
            key=lambda c: (-c["images"], c["from"], c["to"]),
        ),
    }


@pytest.fixture
def invoke(settings):
    return lambda *args: CliRunner().invoke(main, list(args), obj=settings)


@pytest.fixture
def client(settings, conn, operator):
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=settings)
    return signed_in(app.test_client(), conn, operator)


def assert_matches(summary: dict, expected: dict) -> None:
    for key in (
        "shared_images",
        "labelled",
        "differing",
        "fixed",
        "broken",
        "confusion_a",
        "confusion_b",
        "confusion_diff",
        "changes",
    ):
        assert summary[key] == expected[key], key
    assert summary["a"]["accuracy"] == pytest.approx(expected["accuracy_a"])
    assert summary["b"]["accuracy"] == pytest.approx(expected["accuracy_b"])


def test_the_cli_prints_the_numbers_of_a_direct_aggregation(invoke, pair):
    expected = direct_comparison(pair["conn"], pair["a"], pair["b"])
    assert (expected["shared_images"], expected["labelled"]) == (LABELLED + UNLABELLED - 2, LABELLED - 2)
    assert (expected["fixed"], expected["broken"], expected["differing"]) == (1, 2, 4)  # as the fixture made them

    printed = invoke("compare", str(pair["a"]), str(pair["b"]))
    assert printed.exit_code == 0, printed.output
    text = printed.output
    assert f"B = job {pair['b']}: model {MODEL_B}, done, 33 of 33 predicted" in text
    assert (
        f"shared images: 30, 28 of them labelled (predicted only by job {pair['a']}: 2, only by job {pair['b']}: 3)"
        in text
    )
    a, b = pair["a"], pair["b"]
    assert (
        f"accuracy on the labelled shared images: job {a} {expected['accuracy_a']:.4f},"
        f" job {b} {expected['accuracy_b']:.4f}" in text
    )
    different = "different predictions: 4 of 30 (13.33%): 1 fixed by B, 2 broken by B, 0 wrong in both but differently"
    assert f"{different}, 1 on images without a label" in text
    diff_rows = text.split("confusion diff B - A")[1].splitlines()[2:12]
    printed_diff = [[0 if cell == "." else int(cell) for cell in row.split()[1:]] for row in diff_rows]
    assert printed_diff == expected["confusion_diff"]

    as_json = invoke("compare", str(pair["a"]), str(pair["b"]), "--json")
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.output)
    assert_matches(summary, expected)
    assert (summary["a"]["only_here"], summary["b"]["only_here"], summary["unlabelled_changed"]) == (2, 3, 1)
    assert summary["a"]["prediction_versions"] == [summary["a"]["model_version"]] and summary["b"][
        "prediction_versions"
    ] == [MODEL_B]


def test_the_api_and_the_page_show_the_same_numbers(client, pair):
    expected = direct_comparison(pair["conn"], pair["a"], pair["b"])
    answer = client.get(f"/api/compare?a={pair['a']}&b={pair['b']}")
    assert answer.status_code == 200
    assert_matches(answer.json, expected)
    assert answer.json["page_url"] == f"/compare?a={pair['a']}&b={pair['b']}"

    page = client.get(answer.json["page_url"])
    assert page.status_code == 200
    assert "4 of 30: 1 fixed by B, 2 broken by B" in page.text and 'http-equiv="refresh"' not in page.text
    diff_table = page.text.split('class="heatmap diff"')[1].split("</table>")[0]
    cells = [int(value) if value else 0 for value in re.findall(r"<td [^>]*>([^<]*)</td>", diff_table)]
    assert cells == [value for row in expected["confusion_diff"] for value in row]
    assert re.search(r'class="heat-wrong-\d+[^"]* more"[^>]*>\+\d+<', diff_table)  # B's new mistakes: red and positive
    assert re.search(
        r'class="heat-wrong-\d+[^"]* fewer"[^>]*>-\d+<', diff_table
    )  # B's lost right answers: red and negative
    assert re.search(r'class="heat-right-\d+[^"]* more"[^>]*>\+\d+<', diff_table)  # the fixed one: green


def test_the_job_page_links_to_the_comparison_with_a_form(client, pair):
    page = client.get(f"/jobs/{pair['a']}").text
    assert 'action="/compare"' in page and f'name="a" value="{pair["a"]}"' in page and 'name="b"' in page
    assert "Compare two jobs" in client.get("/compare").text  # the form alone


def test_jobs_that_share_no_images_are_said_so_plainly(invoke, client, pair):
    other = store_job(pair["conn"], *stored_digits(pair["conn"], 2, start=200))
    printed = invoke("compare", str(pair["a"]), str(other))
    assert printed.exit_code == 0
    assert printed.output.strip().splitlines()[-1] == (
        f"the two jobs share no images: job {pair['a']}'s 32 predictions and job {other}'s 2 are of different images,"
        " so there is nothing to compare"
    )
    answer = client.get(f"/api/compare?a={pair['a']}&b={other}").json
    assert answer["shared_images"] == 0 and "share no images" in answer["note"] and answer["a"]["accuracy"] is None
    page = client.get(f"/compare?a={pair['a']}&b={other}")
    assert (
        page.status_code == 200 and 'id="note">The two jobs share no images' in page.text and "heatmap" not in page.text
    )


def test_an_unknown_job_is_one_line_and_a_404(invoke, client, pair, conn):
    missing = max_job_id(conn) + 1_000_000
    for args in ((pair["a"], missing), (missing, pair["a"])):
        printed = invoke("compare", *map(str, args))
        assert printed.exit_code == 1 and printed.output == f"Error: there is no job {missing}\n"
        answer = client.get(f"/api/compare?a={args[0]}&b={args[1]}")
        assert answer.status_code == 404 and answer.json["error"] == f"there is no job {missing}"
        assert client.get(f"/compare?a={args[0]}&b={args[1]}").status_code == 404


@pytest.mark.parametrize("query_string", ["", "?a=1", "?b=2", "?a=x&b=2", "?a=0&b=1", "?a=1&b=99999999999999999999"])
def test_the_api_wants_two_job_ids(client, query_string):
    answer = client.get(f"/api/compare{query_string}")
    assert answer.status_code == 400 and answer.json["status"] == 400


def test_only_operators_may_compare(settings, pair):
    anonymous = create_app({"TESTING": True}, settings=settings).test_client()
    page = anonymous.get(f"/compare?a={pair['a']}&b={pair['b']}")
    assert page.status_code == 302 and page.headers["Location"].startswith("/sign-in?next=/compare")
    assert anonymous.get(f"/api/compare?a={pair['a']}&b={pair['b']}").status_code == 401
    public = create_app({"TESTING": True}, settings=settings.replace(public_insights=True)).test_client()
    assert public.get(f"/api/compare?a={pair['a']}&b={pair['b']}").status_code == 200


def test_models_runs_one_selection_on_each_model_and_compares_them(invoke, pair, conn):
    ids = [
        row[0]
        for row in query(
            conn, "SELECT input_data_id FROM predictions WHERE job_id = %s ORDER BY 1 LIMIT 12", (pair["a"],)
        )
    ]
    version = json.loads(invoke("compare", str(pair["a"]), str(pair["b"]), "--json").output)["a"]["model_version"]
    before = max_job_id(conn)
    # The session's registry holds the bundled model alone: production and its own version name it twice.
    printed = invoke(
        "compare",
        "--models",
        "production",
        version,
        *[f"--id={image_id}" for image_id in ids],
        "--json",
        "--timeout",
        "60",
    )
    assert printed.exit_code == 0, printed.output
    summary = json.loads(printed.stdout)
    assert (summary["a"]["id"], summary["b"]["id"]) == (before + 1, before + 2)
    assert summary["a"]["model_version"] == summary["b"]["model_version"] == version
    assert (summary["shared_images"], summary["differing"]) == (12, 0)
    assert summary["a"]["accuracy"] == summary["b"]["accuracy"] is not None


def test_models_refuses_an_unknown_model_before_submitting_anything(invoke, conn):
    before = max_job_id(conn)
    printed = invoke("compare", "--models", "production", "no-such-model", "--split", "test")
    assert printed.exit_code == 1 and printed.output.startswith(
        "Error: there is no model version or alias 'no-such-model'"
    )
    assert max_job_id(conn) == before


@pytest.mark.parametrize(
    "args", [["3"], [], ["3", "4", "--models", "production", "production"], ["3", "4", "--split", "test"]]
)
def test_compare_wants_two_jobs_or_two_models(invoke, args):
    printed = invoke("compare", *args)
    assert printed.exit_code == 2 and "Error:" in printed.output


# --- the stored aggregate of two finished jobs (shared/jobs/comparison_store.py) ----------------------


def stored_pair(conn, job_a: int, job_b: int) -> tuple[int, int] | None:
    """The done counts the pair's aggregate is stored for, or None when it is not stored."""
    row = query(
        conn,
        "SELECT a_done_count, b_done_count FROM job_comparison_pairs WHERE job_a = %s AND job_b = %s",
        (job_a, job_b),
    )
    return tuple(row[0]) if row else None


def forget(conn, job_a: int, job_b: int) -> None:
    query(conn, "DELETE FROM job_comparison_pairs WHERE job_a = %s AND job_b = %s", (job_a, job_b))


def first_images(conn, job_id: int, count: int) -> list[int]:
    return [
        row[0]
        for row in query(
            conn, "SELECT input_data_id FROM predictions WHERE job_id = %s ORDER BY 1 LIMIT %s", (job_id, count)
        )
    ]


def test_two_finished_jobs_are_compared_once_then_read_back(pair):
    """A and B differ in model version and share unlabelled images: the stored answer is the computed one."""
    conn, a, b = pair["conn"], pair["a"], pair["b"]
    forget(conn, a, b)
    forget(conn, b, a)
    computed = load_comparison(conn, a, b)
    assert stored_pair(conn, a, b) == (32, 33)
    stored = load_comparison(conn, a, b)
    assert stored.as_json() == computed.as_json()
    assert_matches(stored.as_json(), direct_comparison(conn, a, b))
    assert stored.counts[0].sum() == UNLABELLED and stored.versions_b == (MODEL_B,) != stored.versions_a

    # The second answer came from the stored rows: doubled there, it doubles.
    query(conn, "UPDATE job_comparisons SET images = images * 2 WHERE job_a = %s AND job_b = %s", (a, b))
    assert load_comparison(conn, a, b).shared == 2 * computed.shared
    forget(conn, a, b)
    assert load_comparison(conn, a, b).as_json() == computed.as_json()

    # B against A is a pair of its own, the same aggregate the other way round.
    reverse = load_comparison(conn, b, a)
    assert stored_pair(conn, b, a) == (33, 32)
    assert np.array_equal(reverse.counts, computed.counts.transpose(0, 2, 1))
    assert load_comparison(conn, b, a).as_json() == reverse.as_json()


def test_an_unfinished_job_is_compared_live_and_stored_once_it_is_done(pair):
    conn, a = pair["conn"], pair["a"]
    ids = first_images(conn, a, 10)
    job = jobs.store.create_job(conn, ids, MODEL_B, {"test": "compare-unfinished"})
    jobs.results.store_results(conn, job, MODEL_B, prediction_batch(ids[:4], 1, 0.9), [])
    running = load_comparison(conn, a, job)
    assert (running.shared, running.job_b["status"]) == (4, "running") and stored_pair(conn, a, job) is None
    assert_matches(running.as_json(), direct_comparison(conn, a, job))

    jobs.results.store_results(conn, job, MODEL_B, prediction_batch(ids[4:], 2, 0.9), [])
    done = load_comparison(conn, a, job)
    assert done.shared == 10 and stored_pair(conn, a, job) == (32, 10)
    assert_matches(done.as_json(), direct_comparison(conn, a, job))
    assert load_comparison(conn, a, job).as_json() == done.as_json()


def test_a_prediction_stored_after_the_job_is_done_is_compared(pair):
    """An image given up on, then predicted by a redelivered batch after all: the job gains a prediction when done."""
    conn, a = pair["conn"], pair["a"]
    ids = first_images(conn, a, 3)
    job = jobs.store.create_job(conn, ids, MODEL_B, {"test": "compare-late"})
    jobs.results.store_results(
        conn, job, MODEL_B, prediction_batch(ids[:2], 1, 0.9), [jobs.results.FailureRow(ids[2], "given up: test")]
    )
    assert load_comparison(conn, a, job).shared == 2 and stored_pair(conn, a, job) == (32, 2)

    assert jobs.results.store_results(conn, job, MODEL_B, prediction_batch(ids[2:], 3, 0.9), []) == (1, 0)
    late = load_comparison(conn, a, job)
    assert (late.shared, late.job_b["status"]) == (3, "done") and stored_pair(conn, a, job) == (32, 3)
    assert_matches(late.as_json(), direct_comparison(conn, a, job))


def waiting_for_a_lock(conn, backends: list[int]) -> int:
    return query(
        conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'", (backends,)
    )[0][0]


def test_two_first_comparisons_of_a_pair_at_once_both_succeed(pair, settings):
    conn, a, b = pair["conn"], pair["a"], pair["b"]
    forget(conn, a, b)
    expected = direct_comparison(conn, a, b)
    # An uncommitted row of the pair's key: both requests miss it, compute, and then wait on that key together.
    gate = connection.connect(settings.database_url)
    requests = [connection.connect(settings.database_url) for _ in range(2)]
    try:
        for request in requests:
            request.autocommit = True  # as the web's pooled connections are
        with gate.cursor() as cursor:
            cursor.execute(
                "INSERT INTO job_comparison_pairs (job_a, job_b, a_done_count, b_done_count) VALUES (%s, %s, 0, 0)",
                (a, b),
            )
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            answers = [pool.submit(load_comparison, request, a, b) for request in requests]
            deadline = time.monotonic() + 60
            backends = [request.info.backend_pid for request in requests]
            while waiting_for_a_lock(conn, backends) < len(requests) and time.monotonic() < deadline:
                time.sleep(0.02)
            waited = waiting_for_a_lock(conn, backends)
            gate.rollback()  # both go on at once: one stores the pair, the other finds it stored
            compared = [answer.result(timeout=60).as_json() for answer in answers]
    finally:
        for each in (gate, *requests):
            each.close()
    assert waited == len(requests)
    assert compared[0] == compared[1]
    assert_matches(compared[0], expected)
    assert stored_pair(conn, a, b) == (32, 33)
    assert load_comparison(conn, a, b).as_json() == compared[0]


def test_an_answered_upload_job_is_not_undone_and_keeps_its_stored_comparisons(conn):
    """Only a job with no answer is undone (mnistq_undo_upload), and only finished jobs' comparisons are stored."""
    job, image = jobs.store.create_upload_job(
        conn, encode_image(np.zeros((28, 28), np.uint8)), [28, 28], MODEL_B, {"test": "compare"}
    )
    jobs.results.store_results(conn, job, MODEL_B, prediction_batch([image], 4, 0.9), [])
    assert load_comparison(conn, job, job).shared == 1 and stored_pair(conn, job, job) == (1, 1)
    assert not jobs.store.delete_upload_job(conn, job, image)
    assert stored_pair(conn, job, job) == (1, 1) and load_comparison(conn, job, job).shared == 1
