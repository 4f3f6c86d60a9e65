"""Ids and names are matched whole (a trailing newline is not a safe id), and messages quote a value from a file
only as a short escaped excerpt."""

from __future__ import annotations

import pandas as pd
import pytest

from wsimil.config import validate_config
from wsimil.datasets.sheet import read_sheet
from wsimil.io import WsimilError, check_slide_id, excerpt


@pytest.mark.parametrize("bad", ["b\n", "b\r", "b\nc", "\nb", "b\x00", "a" * 129, "../b", "b/c", "ｂ"])
def test_check_slide_id_matches_whole(bad):
    with pytest.raises(WsimilError, match="invalid slide id"):
        check_slide_id(bad)


def test_config_names_and_ids_refuse_a_trailing_newline():
    assert validate_config({"dataset": {"name": "ci"}})["dataset"]["name"] == "ci"
    for key, value in (("name", "ci\n"), ("exclude", ["s1\n"])):
        with pytest.raises(WsimilError, match="does not match the pattern"):
            validate_config({"dataset": {key: value}})


def test_sheet_with_newline_and_huge_ids_quotes_an_excerpt(tmp_path):
    path = tmp_path / "slides.csv"
    long_id = "a" * 10_000
    pd.DataFrame({"slide_id": [long_id, "b\n", "ok"], "label": [0, 1, 0], "split": ["train", "test", "val"],
                  "center": ["", "", ""], "path": ["x.tif", "y.tif", "z.tif"],
                  "annotation": ["", "", ""]}).to_csv(path, index=False)
    with pytest.raises(WsimilError) as e:
        read_sheet(path)
    msg = str(e.value)
    assert "line 2: slide_id" in msg and "(10000 characters)" in msg and "line 3: slide_id: 'b\\n'" in msg, msg
    assert len(msg) < 600 and "a" * 41 not in msg


def test_excerpt():
    assert excerpt("abc") == "'abc'"
    assert excerpt("a\nb\x1b[31m") == "'a\\nb\\x1b[31m'"
    assert excerpt("x" * 100, 10) == "'xxxxxxxxxx'... (100 characters)"
    assert excerpt("é") == "'\\xe9'"


def test_unreadable_sheets_are_described_without_their_contents(tmp_path):
    path = tmp_path / "slides.csv"
    path.write_bytes(b"slide_id,label\nSECRET-LINE-\xff\xfe,1\n")
    with pytest.raises(WsimilError) as e:
        read_sheet(path)
    assert "not UTF-8 text (byte" in str(e.value) and "SECRET" not in str(e.value), str(e.value)
    path.write_bytes(b'slide_id,label,split,center,path,annotation\n"SECRET-UNCLOSED,1,train,a,b,\n')
    with pytest.raises(WsimilError) as e:
        read_sheet(path)
    assert str(path) in str(e.value) and "SECRET" not in str(e.value), str(e.value)


def test_annotation_errors_quote_no_more_than_an_excerpt(tmp_path):
    from wsimil.slides.annotations import annotation_file, read_asap_xml

    path = tmp_path / "a.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="T" PartOfGroup="_0"><Coordinates>'
                    '<Coordinate Order="0" X="SECRET-VALUE-1" Y="2"/></Coordinates></Annotation></Annotations>'
                    '</ASAP_Annotations>')
    with pytest.raises(WsimilError, match="bad Coordinate 1 in annotation 'T'") as e:
        read_asap_xml(path)
    assert "SECRET" not in str(e.value)
    path.write_text("SECRET-LINE-OF-SOMEONE-ELSE " * 20)
    with pytest.raises(WsimilError, match="cannot parse annotation XML") as e:
        read_asap_xml(path)
    assert "SECRET" not in str(e.value)
    with pytest.raises(WsimilError, match="is a folder"):
        annotation_file(tmp_path)
