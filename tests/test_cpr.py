"""CPR rules: the century table, validity without modulus 11, replacement numbers, age and sex."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postkasse.routing.cpr import Cpr, InvalidCpr, ReplacementCpr, Sex

TODAY = date(2026, 11, 23)


def century(seventh: int, yy: int) -> int:
    """The CPR office's table: which century the 7th digit gives for a two-digit year."""
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if yy <= 36 else 1900
    return 2000 if yy <= 57 else 1800


@given(
    born=st.dates(min_value=date(1858, 1, 1), max_value=TODAY),
    seventh=st.integers(0, 9),
    rest=st.integers(0, 999),
)
def test_century_table_and_round_trip(born: date, seventh: int, rest: int) -> None:
    yy = born.year % 100
    if century(seventh, yy) + yy != born.year:
        return  # this 7th digit cannot be used for that year
    text = f"{born:%d%m%y}{seventh}{rest:03d}"
    cpr = Cpr.parse(text, TODAY)
    assert cpr.birth_date == born
    assert Cpr.parse(cpr.formatted, TODAY) == cpr
    assert cpr.sex is (Sex.MALE if rest % 2 else Sex.FEMALE)


@given(seventh=st.integers(0, 9), yy=st.integers(0, 99))
def test_every_seventh_digit_and_year_maps_to_one_century(seventh: int, yy: int) -> None:
    text = f"0101{yy:02d}{seventh}000"
    expected = century(seventh, yy) + yy
    if date(expected, 1, 1) > TODAY:
        with pytest.raises(InvalidCpr):
            Cpr.parse(text, TODAY)
    else:
        assert Cpr.parse(text, TODAY).birth_date.year == expected


def test_numbers_failing_modulus_11_are_valid() -> None:
    weights = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
    number = "0101154001"
    assert sum(w * int(d) for w, d in zip(weights, number, strict=True)) % 11 != 0
    assert Cpr.parse(number, TODAY).birth_date == date(2015, 1, 1)


@pytest.mark.parametrize("text", ["010215-4123", "0102154123", " 010215-4123 "])
def test_both_forms_are_accepted(text: str) -> None:
    assert Cpr.parse(text, TODAY).number == "0102154123"


@pytest.mark.parametrize("text", ["3102154123", "0013154123", "010215412", "01021541234", "abcdefghij"])
def test_impossible_dates_and_shapes_are_invalid(text: str) -> None:
    with pytest.raises(InvalidCpr):
        Cpr.parse(text, TODAY)


def test_a_birth_date_in_the_future_is_invalid() -> None:
    tomorrow = TODAY + timedelta(days=1)
    with pytest.raises(InvalidCpr, match="future"):
        Cpr.parse(f"{tomorrow:%d%m%y}4000", TODAY)


@pytest.mark.parametrize("text", ["010215-4AB1", "0102154A12", "010215-ABCD"])
def test_replacement_numbers_are_recognised(text: str) -> None:
    with pytest.raises(ReplacementCpr):
        Cpr.parse(text, TODAY)


@pytest.mark.parametrize(
    ("born", "on", "age"),
    [
        ("0102154123", date(2026, 2, 1), 11),
        ("0102154123", date(2026, 1, 31), 10),
        ("2902124123", date(2025, 2, 28), 12),  # born on leap day: a year older on 1 March
        ("2902124123", date(2025, 3, 1), 13),
        ("2902124123", date(2024, 2, 29), 12),
    ],
)
def test_age_on_a_given_day(born: str, on: date, age: int) -> None:
    assert Cpr.parse(born, TODAY).age_on(on) == age
