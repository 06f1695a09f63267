"""Validation follows --validate-every (the ImageNet presets: 0, after the last epoch only)."""
from __future__ import annotations

import pytest

from proxynas_fast.search import resolve_config
from proxynas_fast.search.errors import SearchError
from proxynas_fast.search.pipeline import _epoch_line, _metrics, validates_after


@pytest.mark.parametrize("every,expected", [(0, [5]), (1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (7, [5])])
def test_validation_epochs(every, expected):
    config = resolve_config(dict(dataset="cifar10", out="o", selection="random", epochs=5, validate_every=every))
    assert [e + 1 for e in range(5) if validates_after(e, config)] == expected


def test_a_skipped_validation_in_the_epoch_record_and_line():
    config = resolve_config(dict(dataset="cifar10", out="o", selection="random", epochs=5))
    record = dict(epoch=2, lr=0.01, train_loss=1.5, train_acc=40.0, train_seconds=3.0, arch_updates=True,
                  **_metrics("val", None))
    assert record["val_loss"] is None and record["val_seconds"] == 0.0
    assert "no validation (3.0s)" in _epoch_line(config, record)


def test_negative_validate_every_is_refused():
    with pytest.raises(SearchError, match="--validate-every: must be >= 0"):
        resolve_config(dict(dataset="cifar10", out="o", selection="random", validate_every=-1)).validate()
