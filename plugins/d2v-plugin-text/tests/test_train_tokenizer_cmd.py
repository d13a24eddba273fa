import json

import typer
from typer.testing import CliRunner

from d2v_core.errors import DataError

from d2v_plugin_text import plugin
from d2v_plugin_text.tokenizer import Tokenizer


def make_app() -> typer.Typer:
    app = typer.Typer()
    plugin.d2v_cli_commands(app=app)  # the hook the d2v CLI calls

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing to a single command
        pass

    return app


def test_train_tokenizer_command_writes_a_model(tmp_path, corpus_file):
    out = tmp_path / "tok" / "m"
    result = CliRunner().invoke(make_app(), ["train-tokenizer", "--corpus", str(corpus_file), "--vocab-size", "150", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tok = Tokenizer.from_file(f"{out}.model")
    assert tok.sp_size == 150 and tok.mask_id == 150
    assert "151 ids" in result.output


def test_several_files_and_jsonl(tmp_path, corpus_lines):
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("\n".join(corpus_lines[:200]), encoding="utf-8")
    b.write_text("\n".join(json.dumps({"text": t}) for t in corpus_lines[200:]), encoding="utf-8")
    out = tmp_path / "m"
    args = ["train-tokenizer", "--corpus", str(a), str(b), "--vocab-size", "100", "--model-type", "unigram", "--out", str(out)]
    result = CliRunner().invoke(make_app(), args)
    assert result.exit_code == 0, result.output
    assert Tokenizer.from_file(f"{out}.model").vocab_size == 101


def test_missing_corpus_is_a_data_error(tmp_path):
    missing = tmp_path / "missing.txt"
    result = CliRunner().invoke(make_app(), ["train-tokenizer", "--corpus", str(missing), "--vocab-size", "100", "--out", str(tmp_path / "m")])
    assert isinstance(result.exception, DataError)
    assert str(missing) in str(result.exception) and "\n" not in str(result.exception)


def test_too_large_vocab_is_a_clear_error(tmp_path, corpus_file):
    result = CliRunner().invoke(make_app(), ["train-tokenizer", "--corpus", str(corpus_file), "--vocab-size", "40000", "--out", str(tmp_path / "m")])
    assert isinstance(result.exception, DataError)
    assert "too large" in str(result.exception) and "\n" not in str(result.exception)


def test_bad_model_type_is_rejected_by_the_parser(tmp_path, corpus_file):
    args = ["train-tokenizer", "--corpus", str(corpus_file), "--vocab-size", "100", "--model-type", "char", "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(make_app(), args)
    assert result.exit_code == 2
