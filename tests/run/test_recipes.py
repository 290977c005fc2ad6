"""Recipe values are checked against the options' declarations (type, choices, range) before any work: one line,
exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, lcp_cli

BAD = {
    "epochs-text": ("finetune_epochs: abc\n", "finetune_epochs must be a whole number"),
    "model-number": ("model: 123\n", "model must be a string"),
    "input-size-scalar": ("input_size: 5\n", "input_size must be a list of whole numbers"),
    "input-size-negative": ("input_size: [3, -32, 32]\n", "input_size must be three positive numbers"),
    "integer-key": ("5: 1\n", "option names must be strings"),
    "seed-text": ("seed: x\n", "seed must be a whole number"),
    "lr-text": ("lr: fast\n", "lr must be a finite number"),
    "budget-bool": ("budget: true\n", "budget must be a finite number"),
    "budgets-text": ("budgets: '0.5,0.3'\n", "budgets must be a list of numbers"),
    "method-unknown": ("method: magic\n", "method must be one of lcp, global"),
    "kd-text": ("kd: maybe\n", "kd must be true or false"),
    "huge-int": ("seed: " + "9" * 5001 + "\n", "cannot be read"),
    # tracebacks before: numpy refused a negative seed, torch one of 2**64 or more
    "seed-negative": ("seed: -1\n", "seed must be between 0 and 2**63-1, got -1"),
    "seed-huge": ("seed: 18446744073709551616\n", "seed must be between 0 and 2**63-1"),
    "lr-huge-int": ("lr: 1" + "0" * 400 + "\n", "lr must be a finite number"),  # OverflowError before
    "deep-nesting": ("budget: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),  # RecursionError before
    # no_progress: "false" was read as true (any value by its truthiness), beside progress one of them won
    "no-progress-text": ('no_progress: "false"\n', "no_progress must be true or false, got 'false'"),
    "no-progress-list": ("no-progress: [1]\n", "no_progress must be true or false"),
    "no-progress-and-progress": ("no_progress: true\nprogress: true\n", "sets both progress and no_progress"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_value_is_one_line_and_writes_nothing(case: str, tiny_folder: Path, tmp_path: Path) -> None:
    text, phrase = BAD[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    res = lcp_cli("prune", "--recipe", recipe, "--model", "resnet20", "--data", tiny_folder, "--out", out)
    assert_one_line_error(res, phrase)
    assert not out.exists()


def test_bad_budgets_flag_is_one_line() -> None:
    assert_one_line_error(lcp_cli("prune", "--budgets", ","), "--budgets must be a list of numbers separated by commas")


@pytest.mark.parametrize("seed", ["-1", "9223372036854775808"])
def test_seed_flag_out_of_range_is_one_line(seed: str) -> None:
    assert_one_line_error(lcp_cli("prune", "--seed", seed), "--seed must be between 0 and 2**63-1")
