"""Bounded work per document: hostile XML and JSON are refused by a scan of their bytes, before a tree of
millions of nodes is built; JSON is read as RFC 8259 says; schema errors name the element, not the value.

Memory is measured in a child process per document (its peak RSS before and after the parse), so one case's
peak cannot hide another's. Speed is not asserted; the child has a generous bound only so a hang fails.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from postkasse.medcom.document import MedcomError
from postkasse.medcom.parse import MAX_BYTES, MAX_NODES, Limits, Schemas, parse
from tests.test_medcom_flow import XSD, fixture
from tests.test_medcom_parse import refused

FHIR_OPEN = b'<Bundle xmlns="http://hl7.org/fhir">'
NS_2005 = b"http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2005/08/07/"
BUDGET = MAX_BYTES - 1024  # each hostile document just fits the size bound: only the node count stops it
INVALID_CPR = b"010215 4123"


def _fill(head: bytes, unit: bytes, tail: bytes) -> bytes:
    return head + unit * ((BUDGET - len(head) - len(tail)) // len(unit)) + tail


def _attributes(separator: bytes) -> bytes:
    """One tag with as many attributes as fit: libxml2 keeps a whole tag's attributes at once."""
    document = io.BytesIO()
    document.write(FHIR_OPEN + b"<a")
    i = 0
    while document.tell() < BUDGET - 32:
        document.write(b" a%d%s" % (i, separator))
        i += 1
    document.write(b"/></Bundle>")
    return document.getvalue()


def _oioxml_breaks() -> bytes:
    """REF01 with a text broken into a million lines: valid by the schema's own grammar."""
    ref01 = fixture("REF01_1.xml")
    start = ref01.index(b"<Supplementary>") + len(b"<Supplementary>")
    return ref01[:start] + b"<Break/>" * ((BUDGET - len(ref01)) // 8) + ref01[start:]


# name -> (document, the reason it is refused for)
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "fhir-xml-empty-elements": (lambda: _fill(FHIR_OPEN, b"<a/>", b"</Bundle>"), "too_many_nodes"),
    "fhir-xml-attributes-in-one-tag": (lambda: _attributes(b'=""'), "too_many_nodes"),
    "fhir-xml-spaced-attributes": (lambda: _attributes(b' = ""'), "too_many_nodes"),
    "oioxml-breaks": (_oioxml_breaks, "too_many_nodes"),
    "json-empty-arrays": (
        lambda: _fill(b'{"resourceType": "Bundle", "entry": [', b"[],", b"[]]}"),
        "too_many_nodes",
    ),
    "json-empty-objects": (
        lambda: _fill(b'{"resourceType": "Bundle", "entry": [', b"{},", b"{}]}"),
        "too_many_nodes",
    ),
    "json-numbers": (lambda: _fill(b'{"resourceType": "Bundle", "n": [', b"0,", b"0]}"), "too_many_nodes"),
    "json-open-arrays": (lambda: _fill(b"", b"[", b""), "too_deep"),
    "json-unterminated-escapes": (lambda: _fill(b'{"a": "', b'\\"', b""), "not_json"),
    "json-quotes": (lambda: _fill(b'{"a": [', b'"",', b'""]}'), "too_many_nodes"),
}


def _measure(name: str) -> dict[str, Any]:
    """Build one hostile document in a child, then parse it there: peak RSS before and after, in bytes.
    The peak is the kernel's VmHWM, which starts anew at exec (ru_maxrss would carry over the forking
    test process's own peak)."""
    program = (
        "import json, re, sys, time\n"
        "def peak():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024\n"
        "from tests.test_medcom_bounds import HOSTILE\n"
        "from postkasse.medcom.document import MedcomError\n"
        "from postkasse.medcom.parse import parse\n"
        "data = HOSTILE[sys.argv[1]][0]()\n"
        "before = peak()\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    parse(data)\n"
        "    reason = None\n"
        "except MedcomError as exc:\n"
        "    reason = exc.reason\n"
        "after = peak()\n"
        "print(json.dumps({'size': len(data), 'before': before, 'after': after, 'reason': reason,\n"
        "                  'seconds': time.monotonic() - started}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, name], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_document_costs_a_small_multiple_of_its_size(name: str) -> None:
    result = _measure(name)
    grew = result["after"] - result["before"]
    print(f"{name}: {result['size']} bytes, parse peak +{grew // 2**20} MiB, {result['seconds']:.2f} s")
    assert result["reason"] == HOSTILE[name][1]
    assert grew <= 2 * result["size"] + 16 * 2**20, result
    assert result["after"] < 300 * 2**20, result


def test_the_node_bound_counts_tags_attributes_and_values() -> None:
    """At the bound a document is read; one node more and it is refused, with its named reason."""
    limits = Limits(max_nodes=2_000)
    bundle = json.loads(fixture("Bundle-R-Tek-K"))
    bundle["padding"] = []  # one node; as [0] * k it is k
    bundle["padding"] = [0] * (limits.max_nodes - _json_nodes(bundle) + 1)
    assert _json_nodes(bundle) == limits.max_nodes
    at_bound = json.dumps(bundle).encode()
    assert parse(at_bound, limits=limits).envelope_id
    bundle["padding"].append(0)
    refusal = refused(json.dumps(bundle).encode(), limits=limits)
    assert (refusal.refuse_code, refusal.reason) == ("ikke_specificeret", "too_many_nodes")
    assert str(limits.max_nodes) in refusal.text

    ref01 = fixture("REF01_1.xml")
    markup = ref01.count(b"<") + len(re.findall(rb"=\s*[\"']", ref01))
    assert parse(ref01, limits=Limits(max_nodes=markup)).letters
    assert refused(ref01, limits=Limits(max_nodes=markup - 1)).reason == "too_many_nodes"


def _json_nodes(value: Any) -> int:
    """Arrays and objects, and each member after the first: what the bound counts, from the parsed value."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max(len(value) - 1, 0) + sum(_json_nodes(v) for v in value)


def test_the_shared_samples_are_far_inside_the_default_bounds() -> None:
    for name in ("REF01_1.xml", "DIS01_1.xml", "CareCommunication-new", "Bundle-R-Tek-K", "Bundle-R-Tek-L"):
        data = fixture(name)
        assert data.count(b"<") + data.count(b",") < MAX_NODES // 20
        assert parse(data).letters


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"NaN", "json_not_finite"),
        (b"Infinity", "json_not_finite"),
        (b"-Infinity", "json_not_finite"),
        (b"1e999999", "json_not_finite"),
        (b"-1e400", "json_not_finite"),
        (b"01", "not_json"),
        (b"'x'", "not_json"),
    ],
)
def test_json_that_is_not_rfc_8259_json_is_refused(value: bytes, reason: str) -> None:
    bundle = fixture("Bundle-R-Tek-K")
    data = bundle.replace(b'"resourceType"', b'"n": ' + value + b', "resourceType"', 1)
    assert data != bundle
    refusal = refused(data)
    assert (refusal.refuse_code, refusal.reason) == ("syntaksfejl", reason)


def test_a_key_twice_in_one_object_is_refused_anywhere() -> None:
    bundle = fixture("Bundle-R-Tek-K")
    twice = bundle.replace(b'"resourceType"', b'"resourceType": "Patient", "resourceType"', 1)
    assert refused(twice).reason == "json_duplicate_key"
    inner = bundle.replace(b'"fullUrl"', b'"fullUrl": "urn:uuid:x", "fullUrl"', 1)
    assert inner != bundle
    refusal = refused(inner)
    assert refusal.reason == "json_duplicate_key" and "urn:uuid" not in refusal.text
    assert parse(bundle.replace(b'"resourceType"', b'"n": 1.5e300, "resourceType"', 1)).letters


def test_a_schema_error_names_the_element_and_rule_never_the_value() -> None:
    """libxml2 says "The value '010215 4123' is not accepted by the pattern"; the refusal must not."""
    data = re.sub(
        rb"<CivilRegistrationNumber>\d+</CivilRegistrationNumber>",
        b"<CivilRegistrationNumber>" + INVALID_CPR + b"</CivilRegistrationNumber>",
        fixture("REF01_1.xml"),
    )
    refusal = refused(data, schemas=Schemas(XSD))
    assert (refusal.refuse_code, refusal.reason) == ("syntaksfejl", "schema_invalid")
    assert "Patient/CivilRegistrationNumber" in refusal.text and "PATTERN" in refusal.text
    assert not re.search(r"010215|4123|\[0-9\]", refusal.text), refusal.text
    assert isinstance(refusal, MedcomError)


def test_a_schema_error_at_a_locally_prefixed_element_is_refused_in_words() -> None:
    """libxml2 names the element by a prefix the document declares only on it; the refusal still says
    where, never fails."""
    data = fixture("REF01_1").replace(
        b"<Envelope>", b'<Envelope><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="x"/>', 1
    )
    with pytest.raises(MedcomError) as refused:
        parse(data, schemas=Schemas(XSD))
    assert refused.value.refuse_code == "syntaksfejl"
