"""The one JSON reader: one error format for a missing file, an unreadable one and bad JSON."""

import pytest

from factory.core.errors import DatasetError, FactoryError
from factory.core.files import read_json


def test_read_json_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert read_json(good) == {"a": [1, 2]}
    with pytest.raises(FactoryError, match=r"missing\.json: no such pool file$"):
        read_json(tmp_path / "missing.json", what="pool file")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(FactoryError, match=r"bad\.json: not valid JSON \(Expecting property name .*line 1 column 2"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DatasetError, match=r"latin\.json: not valid JSON \(.*utf-8"):
        read_json(tmp_path / "latin.json", error=DatasetError)
