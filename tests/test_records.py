"""The typed, versioned records (harness/records.py): each reader refuses a newer format_version with
exit 3 naming the file, reads the older layouts (today's files have no format_version), and gives
back what its writer wrote."""

import json
import math
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import IncompatibleError, InputError
from harness.records import (
    ADAPTER_RECORD_VERSION,
    MARKER_FILE,
    AdapterRecord,
    BaseModelRef,
    CheckpointMarker,
    ExportInfo,
    Finding,
    ParentRef,
    RecordError,
    RecordVersionError,
    StepLogEntry,
    TaskFormat,
    TrainingData,
    TrainMetrics,
    read_adapter_record,
    read_marker,
    read_step_logs,
    write_adapter_record,
    write_marker_file,
    write_step_logs,
)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A real PEFT adapter on the tiny base, without a harness.json (each test writes its own)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    pm.save_pretrained(out)
    return out


def _full_record() -> AdapterRecord:
    return AdapterRecord(
        spec={"r": 4, "lora_alpha": 8.0, "seed": 7, "max_grad_norm": 0.3, "target_modules": ["q_proj"]},
        base_model=BaseModelRef("tiny", "b" * 64, "/models/tiny"),
        data=TrainingData("d" * 64, 10, 8, 2, 9, 1, 321, "/data/orders.jsonl"),
        parent_adapter=ParentRef("p" * 64, "/adapters/parent"),
        task_format=TaskFormat("json_keys", ("item", "quantity")),
        init_lora_weights="default", resumed_from=None,
        anomalies=(Finding("spike", "warning", 3, "loss spiked"),), stopped_by_anomaly=None,
        precision="fp32", gradient_checkpointing=False, kernels={"name": "reference", "reason": "cpu"}, device="cpu",
        packages={"torch": "2.9.0", "bitsandbytes": None},
        metrics=TrainMetrics(final_loss=1.25, steps=4, train_seconds=2.5, n_trainable_parameters=1024,
                             best_eval_loss=1.5, best_step=4),
    )


# -- harness.json -----------------------------------------------------------------------------------


def test_adapter_record_round_trips_through_its_file(tmp_path):
    record = _full_record()
    path = write_adapter_record(tmp_path, record)
    assert json.loads(path.read_text())["format_version"] == ADAPTER_RECORD_VERSION
    assert read_adapter_record(tmp_path) == record
    exported = AdapterRecord(parent_adapter=ParentRef("a" * 64, "/x"), export=ExportInfo("scaled adapter", 0.5),
                             base_model=record.base_model, task_format=record.task_format)
    write_adapter_record(tmp_path, exported)
    assert read_adapter_record(tmp_path) == exported
    assert read_adapter_record(tmp_path / "nowhere") is None


def test_adapter_record_writes_non_finite_numbers_as_null(tmp_path):
    record = AdapterRecord(metrics=TrainMetrics(final_loss=math.nan, best_eval_loss=math.inf))
    text = (write_adapter_record(tmp_path, record)).read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = read_adapter_record(tmp_path)
    assert got is not None and got.metrics == TrainMetrics()


def test_todays_unversioned_harness_json_is_read_and_migrated(tmp_path):
    """A record written before format_version existed (version 0): same layout, PEFT's `true` init."""
    old = {"spec": {"r": 4, "seed": 3}, "base_model": {"name": "tiny", "model_id": "b" * 64, "path": "/m"},
           "parent_adapter": {"adapter_id": "p" * 64, "path": "/adapters/parent"},
           "task_format": {"kind": "json_keys", "keys": ["item"]}, "init_lora_weights": True,
           "anomalies": [{"kind": "plateau", "severity": "warning", "step": 9, "message": "flat"}],
           "metrics": {"final_loss": 1.0, "steps": 3}, "a_key_from_then": 1}
    (tmp_path / "harness.json").write_text(json.dumps(old))
    record = read_adapter_record(tmp_path)
    assert record is not None
    assert record.parent_adapter_id == "p" * 64 and record.base_model_id == "b" * 64
    assert record.init_lora_weights == "default" and record.task_keys == ("item",) and record.seed == 3
    assert record.anomalies == (Finding("plateau", "warning", 9, "flat"),)
    # rewritten, it is the current version and reads back the same
    write_adapter_record(tmp_path, record)
    assert json.loads((tmp_path / "harness.json").read_text())["format_version"] == ADAPTER_RECORD_VERSION
    assert read_adapter_record(tmp_path) == record


def test_newer_harness_json_is_refused_with_exit_3_naming_the_file(adapter_dir, tiny_model_dir, tmp_path, capsys):
    from harness.models.adapters import inspect_adapter

    (adapter_dir / "harness.json").write_text(json.dumps({"format_version": ADAPTER_RECORD_VERSION + 1, "spec": {}}))
    try:
        with pytest.raises(RecordVersionError) as exc:
            inspect_adapter(adapter_dir)
        assert isinstance(exc.value, IncompatibleError) and exc.value.exit_code == 3
        msg = str(exc.value)
        assert str(adapter_dir / "harness.json") in msg and f"format_version {ADAPTER_RECORD_VERSION + 1}" in msg
        assert f"up to version {ADAPTER_RECORD_VERSION}" in msg and "upgrade adapter-harness" in msg
        # the same through a command, before any model work
        assert main(["eval", "--base", str(tiny_model_dir), "--adapter", str(adapter_dir), "--suite", "general-knowledge",
                     "--db", str(tmp_path / "h.duckdb")]) == 3
        err = capsys.readouterr().err
        assert "harness.json" in err and "upgrade adapter-harness" in err
    finally:
        (adapter_dir / "harness.json").unlink()


@pytest.mark.parametrize("text, field", [
    ('{"parent_adapter": {"adapter_id": 5}}', "parent_adapter.adapter_id"),
    ('{"base_model": "tiny"}', "base_model"),
    ('{"task_format": {"kind": "json_keys", "keys": [1]}}', "task_format.keys"),
    ('{"anomalies": [{"kind": "x", "severity": "fatal", "step": 1, "message": ""}]}', "finding.severity"),
    ('{"format_version": "one"}', "format_version"),
    ("[1, 2]", "the record"),
    ("{not json", "not valid JSON"),
])
def test_a_damaged_harness_json_is_an_input_error_naming_the_field(adapter_dir, text, field):
    """A damaged record is refused, not ignored: ignoring it would skip the base-identity check."""
    from harness.models.adapters import inspect_adapter

    (adapter_dir / "harness.json").write_text(text)
    try:
        with pytest.raises(RecordError) as exc:
            inspect_adapter(adapter_dir)
        assert isinstance(exc.value, InputError) and exc.value.exit_code == 2
        assert field in str(exc.value) and str(adapter_dir / "harness.json") in str(exc.value)
    finally:
        (adapter_dir / "harness.json").unlink()


def test_the_store_holds_the_record_its_reader_reads(tmp_path):
    """The adapters.harness column holds the writer's JSON; the gates read it back with the one reader."""
    from harness.records import parse_adapter_record

    record = _full_record()
    assert parse_adapter_record(record.to_json(), "the store") == record
    with pytest.raises(RecordVersionError, match="the store.*format_version 9"):
        parse_adapter_record('{"format_version": 9}', "the store")


# -- checkpoint marker ------------------------------------------------------------------------------


def test_marker_round_trips_and_an_unversioned_one_is_read(tmp_path):
    marker = CheckpointMarker(4, "s" * 64, "d" * 64, "b" * 64, None, {"r": 4}, 1700000000.5)
    write_marker_file(tmp_path, marker)
    assert read_marker(tmp_path) == marker
    old = {k: v for k, v in marker.to_dict().items() if k != "format_version"}
    (tmp_path / MARKER_FILE).write_text(json.dumps(old))
    assert read_marker(tmp_path) == marker


def test_newer_marker_is_refused_and_its_checkpoint_left_in_place(tmp_path):
    """Resume refuses a checkpoint a newer harness marked (exit 3) instead of quarantining it as partial."""
    from harness.train.checkpoints import RunIdentity, find_resumable

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / MARKER_FILE).write_text(json.dumps({"format_version": 7, "step": 2}))
    identity = RunIdentity({"r": 4}, "d" * 64, "b" * 64, None)
    with pytest.raises(RecordVersionError) as exc:
        find_resumable(tmp_path, identity, log=lambda m: None)
    assert exc.value.exit_code == 3 and str(ckpt / MARKER_FILE) in str(exc.value) and "format_version 7" in str(exc.value)
    assert ckpt.is_dir() and not (tmp_path / "quarantine").exists()
    # a damaged marker (no step) is a cut-off save: moved aside, never resumed from
    (ckpt / MARKER_FILE).write_text(json.dumps({"spec_hash": "x"}))
    with pytest.raises(InputError, match="no complete checkpoint"):
        find_resumable(tmp_path, identity, log=lambda m: None)
    assert not ckpt.exists() and len(list((tmp_path / "quarantine").iterdir())) == 1


# -- step logs --------------------------------------------------------------------------------------


def test_step_logs_round_trip_keeping_a_nan_loss(tmp_path):
    entries = [StepLogEntry(1, 0.5, math.nan, 3.0, 1e-3, extra={"mean_token_accuracy": 0.25}),
               StepLogEntry(2, 1.0, eval_loss=1.5, extra={"eval_runtime": 0.1})]
    path = write_step_logs(tmp_path / "step_logs.jsonl", entries)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(line["format_version"] == 1 for line in lines) and "loss" not in lines[1]  # an eval row
    got = read_step_logs(path)
    assert math.isnan(got[0].loss) and got[0].grad_norm == 3.0 and got[0].extra == {"mean_token_accuracy": 0.25}
    assert got[1] == entries[1]


def test_todays_unversioned_step_log_is_read_and_a_newer_one_refused(tmp_path, capsys):
    rows = [{"loss": 2.0 - 0.1 * s, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": s / 10, "step": s} for s in range(1, 6)]
    path = tmp_path / "step_logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(e.step, e.loss) for e in read_step_logs(path)] == [(r["step"], r["loss"]) for r in rows]
    path.write_text(path.read_text() + json.dumps({"format_version": 2, "step": 6, "loss": 1.0}) + "\n")
    with pytest.raises(RecordVersionError, match=r"step_logs.jsonl line 6: step log format_version 2"):
        read_step_logs(path)
    # `harness anomalies` on an adapter directory reads the step log through the same reader
    assert main(["anomalies", str(tmp_path)]) == 3
    assert "upgrade adapter-harness" in capsys.readouterr().err


def test_finding_reader_checks_severity_and_keeps_the_contract_keys():
    f = Finding.from_dict({"kind": "nan_inf", "severity": "error", "step": 3.0, "message": "NaN"}, "x")
    assert f == Finding("nan_inf", "error", 3, "NaN") and set(f.to_dict()) == {"kind", "severity", "step", "message"}
    with pytest.raises(RecordError, match="finding.severity"):
        Finding.from_dict({"kind": "x", "severity": "bad", "step": None, "message": ""}, "x")


def test_a_trained_adapter_is_read_back_as_its_record(tiny_model_dir, tmp_path):
    """The recipe's writer and the adapter reader agree (one record, one place for lineage)."""
    from harness.models.adapters import inspect_adapter
    from harness.train.recipe import train_adapter
    from harness.train.spec import TrainSpec

    rows = [{"prompt": f"Order {i} hoodies.", "completion": f'{{"item": "hoodie", "quantity": {i}}}'} for i in range(1, 5)]
    spec = TrainSpec(base=str(tiny_model_dir), max_steps=1, per_device_train_batch_size=4, r=2, lora_alpha=4)
    parent = train_adapter(spec, tmp_path / "parent", examples=rows, log=lambda m: None)
    child = train_adapter(spec, tmp_path / "child", examples=rows, log=lambda m: None, from_adapter=parent.adapter_dir)
    record = inspect_adapter(child.adapter_dir).record
    assert record is not None and record.parent_adapter_id == parent.adapter_id
    assert record.task_keys == ("item", "quantity") and record.init_lora_weights == "parent"
    assert record.metrics is not None and record.metrics.steps == 1
    assert [e.step for e in read_step_logs(Path(child.adapter_dir) / "step_logs.jsonl")] == [s.step for s in child.step_logs]
