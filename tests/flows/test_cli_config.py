"""`flows run --config FILE.yaml`: overrides from a file (nested or dotted keys), `--set` over
them, resolved as the flow resolves them; a bad key or file is one line, exit 2."""

import pytest

from flows.cli import build_parser, load_request


def test_set_applies_over_the_config_file(tmp_path):
    file = tmp_path / "over.yaml"
    file.write_text("train:\n  steps: 7\n  lr: 0.002\nniah.trials: 1\n")
    argv = ["run", "--preset", "debug_tiny", "--run-root", str(tmp_path), "--config", str(file)]
    request, cfg = load_request(build_parser().parse_args([*argv, "--set", "train.steps=9"]))
    assert request.overrides == {"train.steps": 9, "train.lr": 0.002, "niah.trials": 1}
    train = cfg.train_config()
    assert (train.steps, train.lr, cfg.eval_config("niah").trials) == (9, 0.002, 1)


@pytest.mark.parametrize(("text", "message"), [("trian: {x: 1}\n", "trian"), ("- 1\n", "mapping")])
def test_a_bad_config_file_exits_2_with_one_line(tmp_path, capsys, text, message):
    file = tmp_path / "over.yaml"
    file.write_text(text)
    argv = ["run", "--preset", "debug_tiny", "--run-root", str(tmp_path), "--config", str(file)]
    with pytest.raises(SystemExit) as info:
        load_request(build_parser().parse_args(argv))
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", ["up", "deploy"])
def test_the_resume_schedule_is_active_unless_asked_paused(command):
    """The served end-to-end tests start `flows up --resume-paused` and switch the schedule on
    through the API; what a plain `flows up`/`flows deploy` registers is decided here."""
    parse = build_parser().parse_args
    assert parse([command]).resume_paused is False
    assert parse([command, "--resume-active"]).resume_paused is False
    assert parse([command, "--resume-paused"]).resume_paused is True
