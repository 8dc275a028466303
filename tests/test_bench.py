"""The benchmark helpers that need no long run: reading epoch times from an Ignite log."""

import pytest

from volssl.bench.epochs import JOBS, compare_epochs, parse_epoch_times

LOG = """2026-12-07 20:28:41,490 - INFO - Setting logging properties
Epoch [1/3]: [9/9] 100%|##########\r2026-12-07 20:28:47,748 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[1] Complete. Time taken: 00:00:04.969
2026-12-07 20:28:50,000 - volssl.progress - INFO - pretraining epoch 2/3
2026-12-07 20:28:51,327 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[2] Complete. Time taken: 00:00:03.579
2026-12-07 20:28:54,690 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[3] Complete. Time taken: 00:01:03.363
2026-12-07 20:28:54,993 - ignite.engine.engine.SupervisedTrainer - INFO - Engine run finished. Time taken: 00:00:12.214
"""


def test_epoch_times_are_read_from_the_ignite_log():
    rows = parse_epoch_times(LOG)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["epoch_s"] for r in rows] == pytest.approx([4.969, 3.579, 63.363])


def test_unknown_jobs_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown jobs"):
        compare_epochs(str(tmp_path), jobs=["nope"])
    assert set(JOBS) == {"coral_pretrain", "sal_pretrain", "finetune"}
