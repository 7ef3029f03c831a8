"""What the queue shows of a referral's sender: the plain `Name <address>` most senders write is read
without the email package, and must read exactly as the email package reads it."""

from __future__ import annotations

from email.utils import parseaddr

from hypothesis import given, settings
from hypothesis import strategies as st

from postkasse.committee.views import plain_from, sender_name


@settings(max_examples=500)
@given(
    st.text(alphabet="abzAZ æøåÆØÅé.'-\t_\"(),;:", max_size=16),
    st.text(alphabet="abz09._%+-", min_size=1, max_size=6),
    st.sampled_from(["", " ", "\t"]),
)
def test_a_plain_from_header_reads_as_parseaddr_reads_it(name: str, local: str, pad: str) -> None:
    header = f"{pad}{name}<{local}@klinik.example>{pad}"
    fast = plain_from(header)
    if fast is not None:
        assert fast == parseaddr(header)


def test_the_sender_is_named_by_name_then_address_then_envelope() -> None:
    assert sender_name("Dr.  Hansen <laege@klinik.example>", None) == "Dr. Hansen"
    assert sender_name("Søs Ærø-Åby <s@x.dk>", None) == "Søs Ærø-Åby"
    assert sender_name('"Hansen, Jens" <laege@klinik.example>', None) == "Hansen, Jens"
    assert sender_name("=?utf-8?q?J=C3=B8rgen?= <a@x.dk>", None) == "=?utf-8?q?J=C3=B8rgen?="
    assert sender_name("<laege@klinik.example>", None) == "laege@klinik.example"
    assert sender_name(None, "envelope@x.dk") == "envelope@x.dk"
    assert sender_name(None, None) == "ukendt afsender"
