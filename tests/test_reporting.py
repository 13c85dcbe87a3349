"""The per-class report from a hand-written workdir: table, JSON, mask history, plots."""

import json
import os
import re
import struct

import numpy as np
import pytest

from conftest import within
from tllm_tf import identification as rule_lib
from tllm_tf import json_checks
from tllm_tf.analysis import reporting
from tllm_tf.analysis import workdir_results

CLASS_NAMES = ["cat", "dog", "bird", "fish"]
PER_CLASS = {
    "teacher": [1.0, 1.0, 0.9, 1.0],
    "reference": [0.8, 0.9, 0.5, 0.7],
    "student_kd": [0.9, 0.6, 0.5, 0.8],
    "student_tllm": [0.9, 0.8, 0.6, None],  # No test example of "fish".
}
MASKS = [(2, [1, 0, 0, 1]), (3, [1, 0, 1, 1]), (4, [1, 0, 1, 0])]


def _write_stage(workdir, stage, accuracy, num_samples=(10, 10, 10, 10)):
    os.makedirs(workdir / stage, exist_ok=True)
    with open(workdir / stage / "test_per_class.json", "w") as handle:
        json.dump({"class_names": CLASS_NAMES, "per_class_accuracy": accuracy,
                   "num_samples": list(num_samples),
                   "accuracy": 0.7 if accuracy[0] < 1 else 0.97}, handle)


@pytest.fixture
def workdir(tmp_path):
    for stage, accuracy in PER_CLASS.items():
        _write_stage(tmp_path, stage, accuracy)
    with open(tmp_path / "student_tllm" / "mask_log.jsonl", "w") as handle:
        for epoch, mask in MASKS:
            handle.write(json.dumps({
                "epoch": epoch, "student_accuracy": [0.5] * 4, "reference_accuracy": [0.6] * 4,
                "num_samples": [5] * 4, "class_mask": [float(m) for m in mask],
                "num_undistillable_classes": int(4 - sum(mask))}) + "\n")
    return tmp_path


def _png_size(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def test_load_results_reads_stages_and_mask_history(workdir):
    results = workdir_results.load_results(str(workdir))
    assert results["models"] == ["reference", "student_kd", "student_tllm"]
    assert results["class_names"] == CLASS_NAMES
    assert np.isnan(results["per_class"]["student_tllm"][3])
    assert [r["epoch"] for r in results["mask_history"]] == [2, 3, 4]
    np.testing.assert_array_equal(results["final_mask"], [1, 0, 1, 0])


def test_markdown_table_marks_kd_losses_and_masked_classes(workdir):
    table = reporting.markdown_table(workdir_results.load_results(str(workdir))).splitlines()
    assert table[0] == "| class | reference | student_kd | student_tllm | KD<ref | masked |"
    assert table[2] == "| cat | 80.0 | 90.0 | 90.0 |  |  |"
    assert table[3] == "| dog | 90.0 | 60.0 | 80.0 | x | x |"
    assert table[5] == "| fish | 70.0 | 80.0 | n/a |  | x |"
    assert table[-1] == "| **overall** | 70.0 | 70.0 | 70.0 |  |  |"


def test_json_names_the_undistillable_classes_and_the_mask_history(workdir):
    report = reporting.to_json(workdir_results.load_results(str(workdir)))
    assert report["undistillable_classes"] == {
        "names": ["dog", "fish"], "count": 2, "source": "tllm_mask"}
    assert report["below_baseline"] == {"student_kd": ["dog"], "student_tllm": ["dog"]}
    np.testing.assert_allclose(report["per_class_change"]["student_kd"], [0.1, -0.3, 0.0, 0.1])
    assert report["per_class_change"]["student_tllm"][3] is None
    assert report["accuracy"]["teacher"] == 0.97
    assert report["mask_history"] == [
        {"epoch": 2, "num_undistillable_classes": 2, "undistillable_classes": ["dog", "bird"],
         "added": ["dog", "bird"], "removed": []},
        {"epoch": 3, "num_undistillable_classes": 1, "undistillable_classes": ["dog"],
         "added": [], "removed": ["bird"]},
        {"epoch": 4, "num_undistillable_classes": 2, "undistillable_classes": ["dog", "fish"],
         "added": ["fish"], "removed": []},
    ]


def test_write_report_writes_markdown_json_and_valid_pngs(workdir):
    output_dir = str(workdir / "report")
    written = reporting.write_report(workdir_results.load_results(str(workdir)), output_dir)
    assert sorted(written) == sorted(reporting.REPORT_FILES)
    with open(written["report.json"]) as handle:
        assert json.load(handle)["undistillable_classes"]["count"] == 2
    with open(written["report.md"]) as handle:
        markdown = handle.read()
    assert "![per_class_change](per_class_change.png)" in markdown
    assert "![mask_history](mask_history.png)" in markdown
    assert "## Undistillable classes: 2 of 4" in markdown
    assert "| 3 | 1 |  | bird |" in markdown  # The mask update that freed "bird".
    for name in ("per_class_change.png", "mask_history.png"):
        width, height = _png_size(written[name])
        assert 600 <= width <= 2500 and 300 <= height <= 2500, (name, width, height)
        assert 10_000 < os.path.getsize(written[name]) < 1_000_000
    assert not [f for f in os.listdir(output_dir) if ".tmp" in f]


def test_without_a_tllm_run_kd_below_reference_is_undistillable(workdir):
    os.remove(workdir / "student_tllm" / "mask_log.jsonl")
    results = workdir_results.load_results(str(workdir))
    assert reporting.undistillable_classes(results) == (["dog"], "student_kd below reference")
    assert "masked" not in reporting.markdown_table(results).splitlines()[0]
    output_dir = str(workdir / "report")
    os.makedirs(output_dir)
    with open(os.path.join(output_dir, "mask_history.png"), "w") as handle:
        handle.write("from an earlier report")
    written = reporting.write_report(results, output_dir)
    assert "mask_history.png" not in written
    assert not os.path.exists(os.path.join(output_dir, "mask_history.png"))
    with open(written["report.md"]) as handle:
        assert "mask_history" not in handle.read()


def test_the_refit_student_gets_its_column_and_an_aligned_summary(workdir):
    _write_stage(workdir, "student_tllm_refit", [0.85, 0.9, 0.4, 0.7])
    results = workdir_results.load_results(str(workdir))
    assert results["models"] == ["reference", "student_kd", "student_tllm", "student_tllm_refit"]
    header = reporting.markdown_table(results).splitlines()[0]
    assert header == ("| class | reference | student_kd | student_tllm | student_tllm_refit "
                      "| KD<ref | masked |")
    lines = reporting.summary_lines(results)[:5]  # The stages' accuracies.
    assert len({line.index(":") for line in lines}) == 1  # The colons line up.
    assert lines[-1] == "student_tllm_refit: test accuracy 70.00%"
    assert set(reporting.to_json(results)["per_class_change"]) == {
        "student_kd", "student_tllm", "student_tllm_refit"}


@pytest.mark.parametrize("kept, verdict", [
    ("refit", "not behind it (p = 0.000576 >= 0.05): kept"),
    ("tllm", "behind it (p = 0.000576 < 0.05): took the tllm student's weights")])
def test_the_summary_says_whether_the_refit_kept_its_weights(workdir, kept, verdict):
    _write_stage(workdir, "student_tllm_refit", [0.85, 0.9, 0.4, 0.7])
    check = {"refit_accuracy": 0.71, "tllm_accuracy": 0.745, "behind": 30, "ahead": 9,
             "p_value": 0.000576, "significance": 0.05, "kept": kept}
    with open(workdir / "student_tllm_refit" / "refit_check.json", "w") as handle:
        json.dump(check, handle)
    results = workdir_results.load_results(str(workdir))
    assert (f"TLLM refit on the held-out split: 71.00% against the tllm student's 74.50%, "
            f"{verdict}") in reporting.summary_lines(results)
    assert reporting.to_json(results)["refit_check"] == check


def _write_reference_checks(workdir, checks):
    for stage, check in checks.items():
        with open(workdir / stage / "reference_check.json", "w") as handle:
            json.dump(check, handle)


def test_the_summary_says_which_students_took_the_references_weights(workdir):
    _write_stage(workdir, "student_tllm", [0.85, 0.9, 0.4, 0.7])
    checks = {"student_kd": {"student_accuracy": 0.70, "reference_accuracy": 0.74,
                             "behind": 30, "ahead": 9, "p_value": 0.000576,
                             "significance": 0.2, "kept": "reference",
                             "own_model_file": "model_before_reference_check.keras",
                             "own_test_accuracy": 0.8123,
                             "own_per_class_accuracy": [0.9, 0.7, 0.8, None]},
              "student_tllm": {"student_accuracy": 0.75, "reference_accuracy": 0.74,
                               "behind": 9, "ahead": 12, "p_value": 0.81,
                               "significance": 0.2, "kept": "student"}}
    _write_reference_checks(workdir, checks)
    results = workdir_results.load_results(str(workdir))
    lines = reporting.summary_lines(results)
    assert ("student_kd on the held-out split: 70.00% against the reference's 74.00%, "
            "behind it (p = 0.000576 < 0.2): took the reference's weights (its own test "
            "accuracy was 81.23%, kept in model_before_reference_check.keras)") in lines
    assert ("student_tllm on the held-out split: 75.00% against the reference's 74.00%, "
            "not behind it (p = 0.81 >= 0.2): kept") in lines
    assert reporting.to_json(results)["reference_checks"] == checks
    # The figures of a student that took the reference's weights are the reference's: said.
    assert ("Holding the label-only reference's weights (the fallback), so that their test "
            "accuracies above are the reference's: student_kd") in lines
    (gain,) = [line for line in lines if line.startswith("student_tllm minus KD:")]
    assert gain.endswith(" (student_kd holding the reference's weights)")


def test_a_check_written_before_the_level_and_the_own_model_were_recorded_still_reports(
        workdir):
    _write_stage(workdir, "student_tllm", [0.85, 0.9, 0.4, 0.7])
    _write_reference_checks(workdir, {
        "student_kd": {"student_accuracy": 0.70, "reference_accuracy": 0.74, "behind": 30,
                       "ahead": 9, "p_value": 0.000576, "kept": "reference"},
        "student_tllm": {"student_accuracy": 0.75, "reference_accuracy": 0.74, "behind": 9,
                         "ahead": 12, "p_value": 0.81, "kept": "student"}})
    lines = reporting.summary_lines(workdir_results.load_results(str(workdir)))
    assert ("student_kd on the held-out split: 70.00% against the reference's 74.00%, "
            "behind it (p = 0.000576): took the reference's weights") in lines
    assert ("student_tllm on the held-out split: 75.00% against the reference's 74.00%, "
            "not behind it (p = 0.81): kept") in lines


def test_the_summary_words_the_verdict_as_the_stages_log_does(workdir):
    # The report reads only JSON, so it words the verdict itself: it must match the log's.
    from tllm_tf import held_out_check  # Loads TensorFlow, which reporting must not.

    names = ("student", "reference")
    checks = {"student_kd": held_out_check.compare([False] * 6, [True] * 6, 0.2, names),
              "student_tllm": held_out_check.compare([True] * 6, [False] * 6, 0.2, names)}
    _write_reference_checks(workdir, {stage: check.to_json() for stage, check in checks.items()})
    lines = reporting.summary_lines(workdir_results.load_results(str(workdir)))
    for stage, check in checks.items():
        verdict = check.verdict()
        assert verdict.startswith("behind it" if stage == "student_kd" else "not behind it")
        assert any(line.startswith(stage) and f", {verdict}: " in line for line in lines)


def test_a_workdir_without_the_reference_fallback_reports_no_reference_check(workdir):
    results = workdir_results.load_results(str(workdir))
    assert results["reference_checks"] == {}
    assert not any("against the reference's" in line for line in reporting.summary_lines(results))


def test_each_tllm_students_gain_over_kd_is_split_by_the_final_mask(workdir):
    # Classes weighted by their test images; dog and fish are masked at the end.
    counts = (10, 30, 20, 40)
    _write_stage(workdir, "student_kd", [0.9, 0.6, 0.5, 0.8], counts)
    _write_stage(workdir, "student_tllm", [0.8, 0.9, 0.5, 0.7], counts)
    _write_stage(workdir, "student_tllm_refit", [0.9, 0.6, 0.5, 0.8], counts)
    results = workdir_results.load_results(str(workdir))
    gains = reporting.gain_by_mask(results)
    # Masked: dog +0.3 on 30% of the images, fish -0.1 on 40%; the others: cat -0.1 on 10%.
    assert gains["student_tllm"] == pytest.approx(
        {"masked": 0.05, "not_masked": -0.01, "num_masked": 2})
    assert gains["student_tllm_refit"] == pytest.approx(
        {"masked": 0.0, "not_masked": 0.0, "num_masked": 2})
    assert ("student_tllm minus KD: +4.00 points, +5.00 from the 2 masked classes and -1.00 "
            "from the other 2") in reporting.summary_lines(results)
    assert reporting.to_json(results)["gain_by_mask"] == gains


def test_without_a_masked_class_the_gain_is_not_split(workdir):
    with open(workdir / "student_tllm" / "mask_log.jsonl", "a") as handle:
        handle.write(json.dumps({
            "epoch": 5, "student_accuracy": [0.5] * 4, "reference_accuracy": [0.6] * 4,
            "num_samples": [5] * 4, "class_mask": [1.0] * 4, "num_undistillable_classes": 0})
            + "\n")
    results = workdir_results.load_results(str(workdir))
    assert reporting.gain_by_mask(results) == {}
    assert not any("minus KD" in line for line in reporting.summary_lines(results))


def _append_paired_look(workdir, p_values=(0.5, 0.0, 0.2, None), **level):
    # By default "fish" has no held-out image, so the look did not test it.
    with open(workdir / "student_tllm" / "mask_log.jsonl", "a") as handle:
        handle.write(json.dumps({
            "epoch": 5, "rule": "paired", "student_accuracy": [0.5] * 4,
            "reference_accuracy": [0.6] * 4, "num_samples": [600, 600, 600, 0],
            "class_mask": [1.0, 0.0, 1.0, 1.0], "num_undistillable_classes": 1,
            "behind_counts": [40, 90, 5, 0], "ahead_counts": [40, 30, 2, 0],
            "p_values": list(p_values), **level}) + "\n")


def test_detection_limit_says_how_large_a_gap_the_last_look_could_find(workdir):
    _append_paired_look(workdir, significance_per_look=0.015, correction="holm")
    results = workdir_results.load_results(str(workdir))
    limit = reporting.detection_limit(results)
    assert (limit["epoch"], limit["correction"]) == (5, "holm")
    assert limit["level"] == pytest.approx(0.005)  # Over the three classes tested.
    rows = {row["name"]: row for row in limit["classes"]}
    gap = rule_lib.smallest_detectable_gap(np.array([80, 120]), 0.005)
    assert rows["cat"]["smallest_harm"] == pytest.approx(gap[0] / 600)
    assert rows["dog"]["smallest_harm"] == pytest.approx(gap[1] / 600)
    assert rows["dog"]["student_minus_reference"] == pytest.approx(-60 / 600)
    assert rows["bird"]["smallest_harm"] is None  # 7 discordant images: 2 ** -7 > 0.005.
    assert rows["fish"] == {"name": "fish", "held_out_images": 0, "discordant": 0,
                            "student_minus_reference": None, "smallest_harm": None}
    assert reporting.to_json(results)["detection_limit"] == limit
    markdown = reporting.markdown_report(results)
    assert "## What the rule could see at its last look (epoch 5)" in markdown
    assert f"| dog | 600 | 120 | -10.0 | {100 * gap[1] / 600:.1f} |" in markdown
    assert "| bird | 600 | 7 | -0.5 | none |" in markdown
    assert "| fish | 0 | 0 | n/a | n/a |" in markdown


def test_the_level_is_spread_over_the_classes_the_look_tested(workdir):
    # "bird" has images but too few for min_samples: untested, so Holm divides by two.
    _append_paired_look(workdir, p_values=(0.5, 0.0, None, None),
                        significance_per_look=0.015, correction="holm")
    limit = reporting.detection_limit(workdir_results.load_results(str(workdir)))
    assert limit["level"] == pytest.approx(0.0075)


def test_without_the_looks_level_there_is_no_detection_limit(workdir):
    # The unpaired rule's logs, and paired logs written before the level was recorded.
    assert reporting.detection_limit(workdir_results.load_results(str(workdir))) is None
    _append_paired_look(workdir)
    results = workdir_results.load_results(str(workdir))
    assert reporting.detection_limit(results) is None
    assert "What the rule could see" not in reporting.markdown_report(results)


def test_a_lone_model_gets_a_table_but_no_change_plot(tmp_path):
    _write_stage(tmp_path, "reference", PER_CLASS["reference"])
    results = workdir_results.load_results(str(tmp_path))
    assert reporting.markdown_table(results).splitlines()[0] == "| class | reference |"
    assert reporting.undistillable_classes(results) == ([], None)
    written = reporting.write_report(results, str(tmp_path / "report"))
    assert sorted(written) == ["report.json", "report.md"]


def test_an_empty_workdir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_per_class.json"):
        workdir_results.load_results(str(tmp_path))


def test_a_report_of_the_held_out_split_says_so(workdir, tmp_path):
    # tools/report.py --model_paths --split=held_out printed "test accuracy" for held-out figures.
    results = dict(workdir_results.load_results(workdir), split="held_out")
    assert reporting.summary_lines(results)[0].endswith(
        f"held-out accuracy {100 * results['accuracy']['teacher']:.2f}%")
    written = reporting.write_report(results, str(tmp_path / "report"))
    with open(written["report.md"]) as handle:
        text = handle.read()
    assert "## Held-out accuracy" in text and "## Per-class held-out accuracy (%)" in text
    assert "test accuracy" not in text.lower()
    with open(written["report.json"]) as handle:
        assert json.load(handle)["split"] == "held_out"
    default = workdir_results.load_results(workdir)
    assert "test accuracy" in reporting.summary_lines(default)[0]
    assert reporting.to_json(default)["split"] == "test"


def test_a_class_named_with_a_bar_keeps_its_table_row(tmp_path):
    # A folder's class name may hold "|", which ended the cell and added a column.
    _write_stage(tmp_path, "reference", [0.5, 0.75, 1.0, 1.0])
    results = dict(workdir_results.load_results(str(tmp_path)),
                   class_names=["a|b", "c", "d", "e"])
    rows = reporting.markdown_table(results).splitlines()
    assert rows[2] == "| a\\|b | 50.0 |"
    assert all(row.replace("\\|", "").count("|") == 3 for row in rows)


def test_a_panel_of_a_student_holding_the_references_weights_says_so(workdir, monkeypatch):
    from tllm_tf.analysis import plots  # Imported here: only the plots need matplotlib.

    _write_reference_checks(workdir, {"student_kd": {
        "student_accuracy": 0.70, "reference_accuracy": 0.74, "behind": 30, "ahead": 9,
        "p_value": 0.000576, "significance": 0.2, "kept": "reference"}})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure))
    plots.plot_per_class_change(workdir_results.load_results(str(workdir)), "unused.png")
    titles = [axis.get_title() for axis in figures[0].axes if axis.get_title()]
    assert [title.endswith("(KD student holding the reference's weights)")
            for title in titles] == [True, False]
    assert all(re.search(r"overall [+-]\d+\.\d\d points", title) for title in titles)


@pytest.mark.parametrize("file", ["student_tllm/test_per_class.json",
                                  "student_kd/reference_check.json"])
@pytest.mark.parametrize("planted", ["fifo", "dev_zero", "large"])
def test_a_result_file_that_is_not_a_small_regular_file_is_refused_unread(
        workdir, file, planted):
    # tools/report.py ended in a MemoryError on a link to /dev/zero, and hung on a FIFO.
    path = workdir / file
    if path.exists():
        path.unlink()
    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "w") as handle:
            handle.truncate(json_checks.MAX_RESULT_BYTES + 1)  # Sparse: nothing is written.
    problem = ("is not a regular file" if planted != "large" else
               f"is {json_checks.MAX_RESULT_BYTES + 1} bytes, more than")
    with within(), pytest.raises(ValueError) as refusal:
        workdir_results.load_results(str(workdir))
    message = str(refusal.value)
    assert message.startswith(f"{str(path)!r} {problem}") and message.endswith(
        "Delete it to report without that check." if "check" in file else
        "to train and evaluate student_tllm again.")


_CHECK = {"student_accuracy": 0.70, "reference_accuracy": 0.74, "behind": 30, "ahead": 9,
          "p_value": 0.000576, "significance": 0.2, "kept": "reference",
          "own_model_file": "model_before_reference_check.keras", "own_test_accuracy": 0.8123}


@pytest.mark.parametrize("damage, problem", [
    ({"p_value": "abc"}, "p_value must be a number in [0, 1]. Received: 'abc'"),
    ({"p_value": float("nan")}, "p_value must be a number in [0, 1]. Received: nan"),
    ({"student_accuracy": 74.0}, "student_accuracy must be a number in [0, 1]. Received: 74.0"),
    ({"reference_accuracy": None}, "reference_accuracy must be a number in [0, 1]. Received: None"),
    ({"own_test_accuracy": True}, "own_test_accuracy must be a number in [0, 1]. Received: True"),
    ({"kept": "teacher"}, "kept must be 'student' or 'reference'. Received: 'teacher'"),
    ({"kept": ["reference"]}, "kept must be 'student' or 'reference'. Received: ['reference']"),
    ({"significance": "0.2"}, "significance must be a number in (0, 1) or null. Received: '0.2'"),
    ({"significance": 1.0}, "significance must be a number in (0, 1) or null. Received: 1.0"),
    ({"own_model_file": 7}, "own_model_file must be one of model_before_refit_check.keras, "
                            "model_before_reference_check.keras. Received: 7"),
])
def test_a_check_whose_figures_the_report_cannot_word_is_refused_as_damaged(
        workdir, damage, problem):
    # A p_value of "abc" ended tools/report.py in a ValueError traceback from the format.
    _write_reference_checks(workdir, {"student_kd": dict(_CHECK, **damage)})
    with pytest.raises(ValueError) as refusal:
        workdir_results.load_results(str(workdir))
    path = workdir / "student_kd" / "reference_check.json"
    assert str(refusal.value) == (
        f"{path} is damaged: {problem}. Delete it to report without that check.")


def test_a_refit_check_is_checked_with_its_own_names(workdir):
    _write_stage(workdir, "student_tllm_refit", [0.85, 0.9, 0.4, 0.7])
    path = workdir / "student_tllm_refit" / "refit_check.json"
    check = {"refit_accuracy": 0.71, "tllm_accuracy": 0.745, "p_value": 0.3, "kept": "refit"}
    path.write_text(json.dumps(check))
    assert workdir_results.load_results(str(workdir))["refit_check"] == check
    path.write_text(json.dumps(dict(check, kept="student", tllm_accuracy="0.745")))
    with pytest.raises(ValueError, match="kept must be 'refit' or 'tllm'. Received: 'student'"):
        workdir_results.load_results(str(workdir))
    path.write_text(json.dumps(dict(check, tllm_accuracy="0.745")))
    with pytest.raises(ValueError, match="tllm_accuracy must be a number in"):
        workdir_results.load_results(str(workdir))
