"""The one schema check for everything read back (``doei.config.check_type`` / ``read_json``) and the one
text reader (``doei.utils.io.read_text``): a wrong shape, a BOM, CRLF, non-UTF-8 bytes -> one line or stripped."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from doei.config import check_type, load_yaml, read_json, section
from doei.errors import DoeiError
from doei.utils.io import read_lines, read_text


@dataclass
class _Marker:
    stage: str
    fingerprint: str
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)
    inputs: Optional[dict[str, str]] = None


@pytest.mark.parametrize("text,pattern", [
    ("null", r"m\.json: expected a mapping, found null"),
    ('"abc"', r"m\.json: expected a mapping, found a string 'abc'"),
    ("[1, 2]", r"m\.json: expected a mapping, found a list of 2"),
    ('{"stage": "cam", "fingerprint": null}', r"m\.json\.fingerprint: expected a string, found null"),
    ('{"stage": "cam", "fingerprint": "x", "summary": "done"}', r"m\.json\.summary: expected a mapping, found a string"),
    ('{"stage": "cam", "fingerprint": "x", "inputs": {"a": 3}}', r"m\.json\.inputs\.a: expected a string, found the number 3"),
    ('{"stage": "cam", "fingerprint": "x", "extra": 1}', r"m\.json: unknown key 'extra'"),
    ('{"stage": ', r"m\.json: not valid JSON \(.*line 1"),
])
def test_wrong_shapes_are_one_line(tmp_path, text, pattern):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(DoeiError, match=pattern) as e:
        read_json(tmp_path / "m.json", _Marker)
    assert "\n" not in str(e.value)


def test_good_file_builds_the_dataclass(tmp_path):
    (tmp_path / "m.json").write_text('{"stage": "cam", "fingerprint": "ab", "seconds": 2}')
    m = read_json(tmp_path / "m.json", _Marker)
    assert m == _Marker("cam", "ab", 2.0)
    assert check_type({"a": [1, 2]}, dict[str, list[int]], "x") == {"a": [1, 2]}
    with pytest.raises(DoeiError, match=r"x\.a\[1\]: expected an integer, found a string 'b'"):
        check_type({"a": [1, "b"]}, dict[str, list[int]], "x")


def test_section_of_a_yaml_mapping():
    assert section({"cam": None}, "cam", "c.yaml") == {}
    with pytest.raises(DoeiError, match=r"c\.yaml: cam: expected a mapping, found a list of 1"):
        section({"cam": [1]}, "cam", "c.yaml")


def test_text_bom_crlf_and_not_utf8(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_bytes(b"\xef\xbb\xbf2007_000032\r\n2007_000039\r\n\r\n")
    assert read_lines(p) == ["2007_000032", "2007_000039"]
    p.write_bytes(b"aeroplane\nbicycle\nbi\xe9re\n")
    with pytest.raises(DoeiError, match=r"ids\.txt: not UTF-8 text \(byte 0xe9 at offset 20\)"):
        read_text(p)
    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfa: 1\r\nb: [2]\r\n")
    assert load_yaml(tmp_path / "c.yaml") == {"a": 1, "b": [2]}


def test_os_refusals_are_one_line(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DoeiError, match=r"loop: a symbolic link loop"):
        read_text(tmp_path / "loop")
    with pytest.raises(DoeiError, match=r"the name is longer than the file system allows"):
        read_text(tmp_path / ("x" * 300))
    with pytest.raises(DoeiError, match=r"is a folder"):
        read_text(tmp_path)
