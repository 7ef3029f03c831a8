"""Importing reference data: the official PostNord file, road segments and a registry extract."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from postkasse import cli
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.refdata import Geography, RefdataError, import_file, imports
from postkasse.routing.registry import LocalRegistry
from postkasse.store import Store
from postkasse.store.schema import postal_codes, road_segments
from tests.refdata_files import POSTNORD, registry_file, roads_file

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_postnord_file_as_published(store: Store) -> None:
    result = import_file(store, "postnord", POSTNORD, NOW)
    assert result.rows == 1434
    with store.read() as conn:
        geography = Geography.load(conn)
        assert imports(conn)["postnord"] == (NOW, POSTNORD.name, 1434)
    per_code = Counter({code: len(munis) for code, munis in geography.postal.items()})
    assert len(per_code) == 1121
    assert sum(1 for n in per_code.values() if n > 1) == 238
    assert len(geography.postal_municipalities("4100")) == 6
    assert geography.postal_municipalities("8382") == {"0710", "0751"}  # Hinnerup: Favrskov and Aarhus
    assert geography.postal_municipalities("0800") == {"0169"}  # padded codes, on both sides


def test_road_segments_decide_where_a_postal_code_does_not(store: Store, tmp_path: Path) -> None:
    result = import_file(store, "roads", roads_file(tmp_path), NOW)
    assert result.rows > 100
    with store.read() as conn:
        geography = Geography.load(conn)
    assert geography.street_municipalities("Holmens Kanal", "1060") == {"0101"}
    assert geography.street_municipalities("holmens  kanal", "1060") == {"0101"}  # written loosely
    assert geography.street_municipalities("Holmens Kanal", "8000") == frozenset()


def test_registry_extract(store: Store, tmp_path: Path) -> None:
    path = registry_file(
        tmp_path,
        [
            ("0102154123", "710", "Skolevej", "12", "8382"),
            ("020317-4222", "0751", "", "", ""),
            ("01021541AB", "0101", "", "", ""),
            ("9912994123", "0461", "", "", ""),
        ],
    )
    assert import_file(store, "registry", path, NOW).rows == 4
    with store.read() as conn:
        registry = LocalRegistry.load(conn)
        assert registry.municipality_of("0102154123") == "0710"
        assert registry.municipality_of("0203174222") == "0751"
        assert registry.municipality_of("01021541AB") == "0101"  # a replacement number, kept apart
        assert registry.municipality_of("9912994123") == "0461"  # the last in order
        assert registry.municipality_of("0101010101") is None
        assert registry.municipality_of("9999999999") is None
        assert len(registry) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("AMTS_NR;KOMMUNE_NR;POSTNR;BYNAVN\r\n1082;710;8382;Hinnerup\r\n1082;x71;8450;Hammel\r\n", "line 3"),
        ("AMTS_NR;KOMMUNE_NR;POSTNR\r\n1082;710;8382\r\n", "missing column(s) BYNAVN"),
        ("AMTS_NR;KOMMUNE_NR;POSTNR;BYNAVN\r\n1082;710;83820;Hinnerup\r\n", "line 2: postal code"),
        ("AMTS_NR;KOMMUNE_NR;POSTNR;BYNAVN\r\n1082;710;8382\r\n", "line 2: too few"),
        ("AMTS_NR;KOMMUNE_NR;POSTNR;BYNAVN\r\n", "no data rows"),
    ],
)
def test_a_corrupt_file_is_refused_and_the_old_data_stays(
    store: Store, tmp_path: Path, content: str, message: str
) -> None:
    import_file(store, "postnord", POSTNORD, NOW)
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(RefdataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_file(store, "postnord", bad, datetime(2026, 12, 1, tzinfo=UTC))
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(postal_codes)).scalar() == 1434
        assert imports(conn)["postnord"][0] == NOW


def test_registry_errors_never_print_the_cpr(store: Store, tmp_path: Path) -> None:
    path = registry_file(
        tmp_path,
        [("0102154123", "710", "Skolevej", "12", "8382"), ("0102154123", "751", "Skolevej", "12", "8382")],
    )
    with pytest.raises(RefdataError) as caught:
        import_file(store, "registry", path, NOW)
    assert "line 3" in str(caught.value)
    assert "0102154123" not in str(caught.value)


def test_cli_import_refuses_with_the_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", f"sqlite:///{tmp_path / 'pk.db'}")
    assert cli.main(["refdata", "import", "roads", str(roads_file(tmp_path))]) == 0
    bad = tmp_path / "roads-bad.csv"
    bad.write_text("kommunekode;vejkode;vejnavn;postnr\n101;728;;2450\n", encoding="utf-8")
    assert cli.main(["refdata", "import", "roads", str(bad)]) == 1
    assert "line 2: empty road name" in capsys.readouterr().err
    store = Store(f"sqlite:///{tmp_path / 'pk.db'}")
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(road_segments)).scalar() > 100
    store.dispose()


def test_the_98_municipalities_ship_with_the_project() -> None:
    municipalities = Municipalities.load(DEFAULT_MUNICIPALITIES)
    assert len(municipalities) == 98
    per_region = Counter(m.region for m in municipalities.by_code.values())
    assert per_region == {"1081": 11, "1082": 19, "1083": 22, "1084": 29, "1085": 17}
    assert municipalities.get("0710") is not None and municipalities.get("0411") is None
    assert all(m.participating for m in municipalities.by_code.values())
