"""CLI errors are one clear line and exit status 2, not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)


def test_unknown_data_is_one_line():
    result = cli("evaluate", "--data", "/no/such/folder", "--checkpoint", "/tmp/none")
    assert result.returncode == 2
    assert result.stderr.startswith("interest-updater: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_worker_without_checkpoint_says_what_to_do():
    result = cli("worker", "--broker", "127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 2 and "--checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_environment_value_is_reported():
    import os

    result = cli("worker", "--help", env={**os.environ, "IU_BATCH_MAX": "many"})
    assert result.returncode == 2 and "IU_BATCH_MAX" in result.stderr


def test_help_names_environment_variables_and_hides_secrets():
    import os

    result = cli("worker", "--help", env={**os.environ, "IU_REDIS_URL": "redis://:hunter2@db:6379/0"})
    assert result.returncode == 0
    assert "[env: IU_BATCH_MAX]" in result.stdout and "hunter2" not in result.stdout


def test_evaluation_table_puts_published_figures_and_notes_beside_ours():
    from streams.cli.offline import evaluation_table

    ours = {"hr@10": 0.3, "ndcg@10": 0.17, "hr@20": 0.4, "ndcg@20": 0.2, "mrr@20": 0.13, "cases": 6040}
    table = evaluation_table("ml-1m", "leave-one-out", "test", [("sequence encoder", ours)]).splitlines()
    assert table[0] == "ml-1m: leave-one-out, split=test, full ranking, 6040 cases"
    assert table[2].split() == ["sequence", "encoder", "0.3000", "0.1700", "0.4000", "0.2000", "0.1300"]
    assert any(line.startswith("published: HSTU-large") and "0.1893" in line for line in table)
    assert "excludes items already in the user's history" in table[-1]
    # Published figures are leave-one-out test figures only.
    assert len(evaluation_table("ml-1m", "leave-one-out", "valid", [("m", ours)]).splitlines()) == 3


def test_debug_shows_the_traceback_the_error_line_hides():
    import os

    quiet = cli("evaluate", "--data", "/no/such/folder", "--checkpoint", "/tmp/none")
    loud = cli("evaluate", "--data", "/no/such/folder", "--checkpoint", "/tmp/none", "--debug")
    by_env = cli("evaluate", "--data", "/no/such/folder", "--checkpoint", "/tmp/none",
                 env={**os.environ, "IU_DEBUG": "1"})
    assert "Traceback" not in quiet.stderr
    for result in (loud, by_env):
        assert result.returncode == 2 and "Traceback (most recent call last)" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_a_bad_setting_is_one_line_naming_the_flag():
    for flags, named in ((["--batch-max", "0"], "--batch-max"), (["--blend", "current=lots"], "--blend")):
        result = cli("worker", *flags, "--checkpoint", "/tmp/none")
        assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_busy_metrics_port_names_the_port_and_the_flag(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The port check comes after the checkpoint loads: give the worker one to load.
        from encoders.data import synthetic
        from encoders.training.train import train

        checkpoint = train(synthetic(n_users=30), tmp_path / "ckpt", d_model=16, n_layers=1, n_heads=1, max_len=20,
                           epochs=1, progress=False)
        result = cli("worker", "--checkpoint", str(checkpoint), "--metrics-port", str(port), "--text-encoder",
                     "false")
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port {port}" in result.stderr and "Traceback" not in result.stderr


def test_train_flags_become_a_train_config():
    from streams.cli import _parser
    from streams.cli.offline import train_config

    args = _parser().parse_args(["train", "--data", "synthetic", "--out", "x", "--layers", "3", "--heads", "4",
                                 "--d-model", "128", "--loss", "sampled", "--refit", "--max-seconds", "60"])
    config = train_config(args)
    assert (config.n_layers, config.n_heads, config.d_model, config.loss) == (3, 4, 128, "sampled")
    assert config.refit and config.max_seconds == 60.0
    # The command's own defaults, where they differ from train()'s: SASRec+'s recipe (README, ML-1M).
    assert (config.epochs, config.patience, config.text_fusion) == (200, 10, False)
    assert (config.block, config.dropout, config.batch_size) == ("sasrec", 0.1, 128)  # --dropout auto until read
    assert train_config(_parser().parse_args(["train", "--data", "d", "--out", "x", "--dropout", "0.3"])).dropout == 0.3
    assert config.input_scale == pytest.approx(128 ** 0.5)  # --input-scale sqrt follows --d-model
    fixed = _parser().parse_args(["train", "--data", "d", "--out", "x", "--input-scale", "1", "--heads", "2"])
    assert (train_config(fixed).input_scale, train_config(fixed).n_heads) == (1.0, 2)
    # Refit is on unless --no-refit: on sparse data it is what beats evaluate's co-occurrence baseline.
    assert train_config(_parser().parse_args(["train", "--data", "synthetic", "--out", "x"])).refit
    assert not train_config(_parser().parse_args(["train", "--data", "synthetic", "--out", "x", "--no-refit"])).refit
    # Every window of long histories unless --no-all-windows: +4.4% NDCG@10 on ML-1M at convergence (README).
    assert config.all_windows
    newest_only = _parser().parse_args(["train", "--data", "d", "--out", "x", "--no-all-windows"])
    assert not train_config(newest_only).all_windows
    assert train_config(_parser().parse_args(["train", "--data", "d", "--out", "x", "--max-len", "50"])).max_len == 50
    assert config.loss_precision == "auto" and config.attention_dropout is None
    assert config.ema_epochs == 3.0  # the average is validated and saved (README, "Training")
    assert train_config(_parser().parse_args(["train", "--data", "d", "--out", "x", "--ema-epochs",
                                               "0"])).ema_epochs == 0.0
    assert train_config(_parser().parse_args(["train", "--data", "d", "--out", "x", "--attention-dropout",
                                               "0"])).encoder_config(10).attention_dropout_p == 0.0
    assert train_config(_parser().parse_args(["train", "--data", "d", "--out", "x", "--loss-precision",
                                               "fp32"])).loss_precision == "fp32"


def log_of(lengths: list[int]):
    """A log of one user per length, each with that many clicks."""
    from encoders.data.records import Catalogue, Dataset, Event

    clicks = [Event(f"u{u}", f"i{n}", n * 1000) for u, length in enumerate(lengths) for n in range(length)]
    return Dataset("d", clicks, [], Catalogue({}, {}))


def test_max_len_auto_covers_99_percent_of_histories_in_tens_up_to_200(caplog):
    from streams.cli.offline import auto_max_len

    with caplog.at_level("INFO", logger="interest_updater.train"):
        assert auto_max_len(log_of([3] * 99 + [300])) == 10  # one long outlier does not set it
    assert "--max-len auto: 10 (99% of 100 histories have at most" in caplog.text
    assert auto_max_len(log_of([23] * 50)) == 30
    assert auto_max_len(log_of([250] * 10)) == 200


def test_dropout_auto_is_half_where_the_median_history_is_short(caplog):
    from streams.cli.offline import auto_dropout

    with caplog.at_level("INFO", logger="interest_updater.train"):
        assert auto_dropout(log_of([6] * 60 + [300] * 40)) == 0.5  # reviews: long outliers do not set it
    assert "--dropout auto: 0.5 (the median history has 6 events; below 20 gets 0.5)" in caplog.text
    assert auto_dropout(log_of([19] * 5)) == 0.5
    assert auto_dropout(log_of([20] * 5)) == 0.1  # ML-1M's median is 96: SASRec+'s rate
    assert auto_dropout(log_of([2] * 40 + [96] * 60)) == 0.1


def test_d_model_auto_is_wider_where_the_median_history_is_long(caplog):
    from streams.cli.offline import auto_d_model

    with caplog.at_level("INFO", logger="interest_updater.train"):
        assert auto_d_model(log_of([6] * 60 + [300] * 40)) == 64  # reviews: long outliers do not set it
    assert "--d-model auto: 64 (the median history has 6 events; below 20 gets 64)" in caplog.text
    assert auto_d_model(log_of([19] * 5)) == 64
    assert auto_d_model(log_of([20] * 5)) == 128
    assert auto_d_model(log_of([2] * 40 + [96] * 60)) == 128  # ML-1M's median is 96
    assert auto_d_model(log_of([])) == 64


def test_train_resolves_the_auto_flags_from_the_data_and_keeps_the_given_ones():
    from streams.cli import _parser
    from streams.cli.offline import train_config, with_data_defaults

    sessions = log_of([3] * 20)
    auto = _parser().parse_args(["train", "--data", "d", "--out", "x"])
    resolved = with_data_defaults(train_config(auto), auto, sessions)
    assert (resolved.dropout, resolved.max_len, resolved.d_model) == (0.5, 10, 64)
    assert resolved.input_scale == pytest.approx(64 ** 0.5)
    dense = with_data_defaults(train_config(auto), auto, log_of([60] * 5))
    assert (dense.d_model, dense.input_scale) == (128, pytest.approx(128 ** 0.5))  # sqrt follows the width
    given = _parser().parse_args(["train", "--data", "d", "--out", "x", "--dropout", "0.2", "--max-len", "50",
                                  "--d-model", "32", "--input-scale", "2"])
    resolved = with_data_defaults(train_config(given), given, log_of([60] * 5))
    assert (resolved.dropout, resolved.max_len, resolved.d_model, resolved.input_scale) == (0.2, 50, 32, 2.0)


def described_log(titled: int, texts: int, items: int = 10, test_sessions: bool = False):
    """One user clicking ``items`` items; the first ``titled`` have a title, the next ``texts`` a review."""
    from encoders.data.records import Catalogue, Dataset, Event

    clicks = [Event("u", f"i{n}", n * 1000) for n in range(items)]
    reviews = [Event("u", f"i{n}", n * 1000 + 1, text="warm tone", kind="review")
               for n in range(titled, titled + texts)]
    catalogue = Catalogue({f"i{n}": f"Item {n}" for n in range(titled)}, {f"i{n}": ("Strings",) for n in range(items)})
    test = [Event("v", "i0", 0), Event("v", "i1", 1)] if test_sessions else []
    return Dataset("d", clicks, reviews, catalogue, test_clicks=test)


def test_item_init_auto_starts_from_texts_where_half_the_items_have_some(caplog):
    from streams.cli.offline import auto_item_init

    with caplog.at_level("INFO", logger="interest_updater.train"):
        assert auto_item_init(described_log(titled=0, texts=5), "auto") == "text"  # reviews (Amazon)
    assert "--item-init auto: text (5 of 10 items have a title or a text about them; text needs half)" in caplog.text
    assert auto_item_init(described_log(titled=10, texts=0), "auto") == "text"  # titles (MovieLens)
    assert auto_item_init(described_log(titled=2, texts=2), "auto") == "random"
    assert auto_item_init(described_log(titled=0, texts=0), "auto") == "random"  # categories alone (Foursquare)
    with caplog.at_level("INFO", logger="interest_updater.train"):
        assert auto_item_init(described_log(titled=10, texts=0, test_sessions=True), "auto") == "random"
    assert "--item-init auto: random (the split is session; text needs leave-one-out)" in caplog.text
    assert auto_item_init(described_log(titled=10, texts=0, test_sessions=True), "leave-one-out") == "text"


def test_item_init_is_resolved_from_the_data_unless_given():
    from streams.cli import _parser
    from streams.cli.offline import train_config, with_data_defaults

    auto = _parser().parse_args(["train", "--data", "d", "--out", "x"])
    assert train_config(auto).item_init == "random"  # until the data is read
    assert with_data_defaults(train_config(auto), auto, described_log(titled=10, texts=0)).item_init == "text"
    given = _parser().parse_args(["train", "--data", "d", "--out", "x", "--item-init", "random"])
    assert with_data_defaults(train_config(given), given, described_log(titled=10, texts=0)).item_init == "random"


def test_a_bad_dropout_names_the_flag():
    result = cli("train", "--data", "synthetic", "--out", "/tmp/never-written", "--dropout", "high")
    assert result.returncode == 2
    assert "argument --dropout: expected a rate or auto, got 'high'" in result.stderr


def test_a_bad_max_len_names_the_flag():
    result = cli("train", "--data", "synthetic", "--out", "/tmp/never-written", "--max-len", "long")
    assert result.returncode == 2
    assert "argument --max-len: expected a number of events or auto, got 'long'" in result.stderr


def test_a_bad_d_model_names_the_flag():
    result = cli("train", "--data", "synthetic", "--out", "/tmp/never-written", "--d-model", "wide")
    assert result.returncode == 2
    assert "argument --d-model: expected a width or auto, got 'wide'" in result.stderr


def test_context_features_are_chosen_by_name_and_a_bad_name_names_the_flag():
    from streams.cli import _parser
    from streams.cli.offline import train_config

    args = _parser().parse_args(["train", "--data", "d", "--out", "x", "--context-features", "cell,hour_of_week"])
    assert train_config(args).context_features == ("hour_of_week", "cell")
    result = cli("train", "--data", "synthetic", "--out", "/tmp/never-written", "--context-features", "hour")
    assert result.returncode == 2
    assert ("argument --context-features: expected auto, on, off or some of "
            "hour_of_week,device,region,cell,distance, comma-separated; got 'hour'") in result.stderr


def test_a_bad_train_flag_fails_before_the_data_is_read():
    result = cli("train", "--data", "/no/such/folder", "--out", "/tmp/none", "--epochs", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "interest-updater: error: training config values: epochs=0 must be >= 1"


def test_every_offline_flag_has_help_that_shows_its_default():
    from streams.cli import _parser

    commands = _parser()._subparsers._group_actions[0].choices
    for name in ("train", "evaluate", "finetune"):
        for action in commands[name]._actions:
            if action.option_strings and action.dest not in ("help", "data", "out", "checkpoint"):
                assert action.help and ("default" in action.help or action.required), (name, action.dest)


def test_threads_below_one_is_refused_naming_the_flag():
    result = cli("train", "--data", "synthetic", "--out", "/tmp/never-written", "--threads", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["interest-updater: error: --threads 0: expected 1 or more"]


def test_train_says_what_the_text_projection_stopped_on(synthetic_checkpoint):
    import orjson

    from streams.cli.offline import fusion_summary

    fusion = orjson.loads((synthetic_checkpoint / "report.json").read_bytes())["text_fusion"]
    lines = fusion_summary(fusion)
    # The synthetic log's searches move the projection, so they decide when it stops.
    assert lines[0] == f"text projection: best epoch {fusion['stage1']['best_epoch']}, stopped on users with texts"
    assert fusion["stage1"]["best_epoch"] >= 1 and "fused" in lines[1]
    assert fusion_summary({"skipped": "no texts"}) == ["no text fusion: no texts"]
