"""Manifest parsing and validation: every refusal names the node and the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshrtc.errors import MeshRtcError
from meshrtc.pipeline import DEFAULT_MANIFEST, Manifest, ManifestError, default_manifest
from meshrtc.pipeline.nodes import DataEcho, Gain, MixMinus, PassThrough

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pipeline.md"


def base() -> dict[str, Any]:
    return {
        "version": "v1",
        "metadata": {"name": "t"},
        "nodes": [
            {"id": "a", "node_type": "PassThrough", "params": {}},
            {"id": "gain", "node_type": "Gain", "params": {"gain_db": -6}},
            {"id": "c", "node_type": "PassThrough", "params": {}},
        ],
        "connections": [{"from": "a", "to": "gain"}, {"from": "gain", "to": "c"}],
    }


def test_valid_manifest_structure() -> None:
    m = Manifest.from_dict(base())
    assert [n.id for n in m.nodes] == ["a", "gain", "c"]
    assert m.node("gain").node_class is Gain
    assert m.node("gain").params == {"gain_db": -6}
    assert m.node("gain").config == {"gain": pytest.approx(10 ** (-6 / 20))}
    assert m.source_nodes == ("a",)
    assert m.output_nodes == ("c",)
    assert m.upstream("c") == ("gain",)
    assert m.downstream("a") == ("gain",)
    assert m.to_dict() == base()
    assert Manifest.from_dict(m.to_dict()) == m


def test_json_yaml_and_load(tmp_path: Path) -> None:
    data = base()
    from_json = Manifest.from_json(json.dumps(data))
    from_yaml = Manifest.from_yaml(yaml.safe_dump(data))
    assert from_json == from_yaml == Manifest.from_dict(data)
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    assert Manifest.load(tmp_path / "m.json") == from_json
    assert Manifest.load(str(tmp_path / "m.yaml")) == from_json
    assert Manifest.load(tmp_path / "m.yaml").source == str(tmp_path / "m.yaml")


def test_remotemedia_fields_accepted() -> None:
    data = base()
    data["metadata"] = {"name": "rm", "description": "x", "created_at": "2025-01-01"}
    data["nodes"][0].update(is_streaming=True, host="local", runtime_hint="cpython")
    data["nodes"][1]["is_output_node"] = True
    m = Manifest.from_dict(data)
    assert m.output_nodes == ("gain", "c")
    assert m.to_dict()["nodes"][1]["is_output_node"] is True


def test_missing_metadata_and_connections_default() -> None:
    m = Manifest.from_dict({"version": "v1", "nodes": [{"id": "x", "node_type": "DataEcho"}]})
    assert m.metadata == {}
    assert m.connections == ()
    assert m.node("x").node_class is DataEcho


def test_default_manifest_is_the_documented_one() -> None:
    m = default_manifest()
    assert {n.node_type for n in m.nodes} == {"MixMinus", "VideoPassThrough", "DataEcho"}
    assert m.node("audio_mix").node_class is MixMinus
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- default-manifest -->\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/pipeline.md lost its default-manifest block"
    assert yaml.safe_load(block.group(1)) == DEFAULT_MANIFEST
    assert m.to_dict() == DEFAULT_MANIFEST


def test_user_node_by_import_path() -> None:
    data = base()
    data["nodes"][1] = {
        "id": "gain",
        "node_type": "tests.pipeline_user_nodes:Scale",
        "params": {"factor": 2},
    }
    m = Manifest.from_dict(data)
    assert m.node("gain").node_class.__name__ == "Scale"
    assert m.node("gain").config == {"factor": 2.0}


def _set(path: str, value: Any) -> Any:
    """A mutation of base(): ``path`` is a dotted path, ``DEL`` removes the key."""

    def mutate(d: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = d
        for k in keys[:-1]:
            target = target[k]
        if value is DEL:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return mutate


DEL = object()

CASES: list[tuple[str, Any, str | None, str]] = [
    ("bad version", _set("version", "v2"), None, "version"),
    ("no version", _set("version", DEL), None, "version"),
    ("unknown top-level field", _set("nodez", []), None, "nodez"),
    ("metadata not a mapping", _set("metadata", [1]), None, "metadata"),
    ("no nodes", _set("nodes", []), None, "nodes"),
    ("node not a mapping", _set("nodes.0", "PassThrough"), None, "nodes[0]"),
    ("missing id", _set("nodes.0.id", DEL), None, "nodes[0].id"),
    ("empty id", _set("nodes.0.id", " "), None, "nodes[0].id"),
    ("duplicate id", _set("nodes.2.id", "a"), "a", "nodes[2].id"),
    ("unknown node field", _set("nodes.1.parmas", {}), "gain", "parmas"),
    ("missing node_type", _set("nodes.1.node_type", DEL), "gain", "node_type"),
    ("unknown node_type", _set("nodes.1.node_type", "Gian"), "gain", "node_type"),
    (
        "import path to missing module",
        _set("nodes.1.node_type", "no_such_module_xyz:Node"),
        "gain",
        "node_type",
    ),
    (
        "import path to missing class",
        _set("nodes.1.node_type", "tests.pipeline_user_nodes:Nope"),
        "gain",
        "node_type",
    ),
    (
        "import path to a non-node",
        _set("nodes.1.node_type", "tests.pipeline_user_nodes:NotANode"),
        "gain",
        "node_type",
    ),
    ("params not a mapping", _set("nodes.1.params", [1]), "gain", "params"),
    ("unknown param", _set("nodes.1.params", {"gain_bd": 3}), "gain", "params.gain_bd"),
    ("param wrong type", _set("nodes.1.params.gain_db", "loud"), "gain", "params.gain_db"),
    ("param out of range", _set("nodes.1.params.gain_db", 99), "gain", "params.gain_db"),
    ("param not finite", _set("nodes.1.params.gain_db", float("nan")), "gain", "params.gain_db"),
    ("both gains", _set("nodes.1.params.gain", 2), "gain", "params.gain"),
    ("no gain", _set("nodes.1.params", {}), "gain", "params.gain_db"),
    ("bad choice", _set("nodes.0.params", {"target": "everyone"}), "a", "params.target"),
    (
        "user check_params raising ValueError",
        _set("nodes.1.node_type", "tests.pipeline_user_nodes:BadParams"),
        "gain",
        "params",
    ),
    ("is_output_node not bool", _set("nodes.1.is_output_node", "yes"), "gain", "is_output_node"),
    ("connections not a list", _set("connections", {"from": "a"}), None, "connections"),
    ("connection not a mapping", _set("connections.0", "a->gain"), None, "connections[0]"),
    ("connection missing to", _set("connections.0.to", DEL), None, "connections[0].to"),
    ("connection to unknown node", _set("connections.1.to", "ghost"), "ghost", "connections[1].to"),
    (
        "connection from unknown",
        _set("connections.0.from", "ghost"),
        "ghost",
        "connections[0].from",
    ),
    ("connection extra field", _set("connections.0.port", 1), None, "connections[0].port"),
    ("self loop", _set("connections.0.to", "a"), "a", "connections[0]"),
    (
        "duplicate connection",
        _set("connections.1", {"from": "a", "to": "gain"}),
        "gain",
        "connections[1]",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "node_id", "field"),
    [pytest.param(m, n, f, id=name) for name, m, n, f in CASES],
)
def test_refusals_name_node_and_field(mutate: Any, node_id: str | None, field: str) -> None:
    data = copy.deepcopy(base())
    mutate(data)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data, source="t.yaml")
    err = info.value
    assert (err.node_id, err.field) == (node_id, field), str(err)
    message = str(err)
    assert f"field {field!r}" in message
    assert "t.yaml" in message
    if node_id is not None:
        assert f"node {node_id!r}" in message
    assert isinstance(err, MeshRtcError)


def test_cycle_names_the_cycle() -> None:
    data = base()
    data["connections"].append({"from": "c", "to": "a"})
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert info.value.field == "connections"
    assert info.value.node_id in {"a", "gain", "c"}
    assert re.search(
        r"(a -> gain -> c -> a|gain -> c -> a -> gain|c -> a -> gain -> c)", str(info.value)
    )


def test_incompatible_connection_names_target() -> None:
    data = {
        "version": "v1",
        "nodes": [
            {"id": "echo", "node_type": "DataEcho"},
            {"id": "g", "node_type": "Gain", "params": {"gain": 2}},
        ],
        "connections": [{"from": "echo", "to": "g"}],
    }
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert (info.value.node_id, info.value.field) == ("g", "connections[0]")
    assert "accepts Audio" in str(info.value)


@pytest.mark.parametrize(
    ("text", "parse"),
    [
        ("{not json", Manifest.from_json),
        ("a: [unclosed", Manifest.from_yaml),
        ("- 1\n- 2", Manifest.from_yaml),
    ],
)
def test_unparseable_documents(text: str, parse: Any) -> None:
    with pytest.raises(ManifestError) as info:
        parse(text)
    assert info.value.field == "<document>"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.load(tmp_path / "nope.yaml")
    assert info.value.field == "<file>"
    assert "nope.yaml" in str(info.value)


def test_passthrough_accepts_everything() -> None:
    assert PassThrough.check_params({}) == {"target": "unchanged"}
