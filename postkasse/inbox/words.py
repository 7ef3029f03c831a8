"""The Danish the pages show for the codes the store keeps: one place, so every page says the same."""

from __future__ import annotations

from postkasse.committee.referrals import EXCEPTIONS, RETURN_REASONS
from postkasse.pathway.plan import MEETING_NAMES, RELATION_NAMES

STATES = {"triage": "i triage", "new": "ny", "pulled": "taget", "handled": "behandlet"}
OUTCOMES = {
    "forwarded": "videresendt",
    "returned": "returneret",
    "joint_pathway": "fælles forpligtende forløb",
    "closed": "afsluttet",
}
SENDER_KINDS = {
    "gp": "praktiserende læge",
    "child_psychiatry": "børne- og ungdomspsykiatri",
    "somatic_ward": "somatisk børneafdeling",
    "other": "anden afsender",
}
FLAGS = {
    "urgent": "haster",
    "unread_reply": "ulæst svar fra afsender",
    "address_disagrees": "adressen stemmer ikke",
    "outside_target_age": "uden for målgruppens alder",
}
LEVELS = {"ok": "i orden", "warning": "varsel", "breach": "overskredet", "stopped": "undtaget"}
DEADLINES = {
    "emptying": "daglig tømning",
    "handling": "behandling (8 dage)",
    "startup_meeting": "opstartsmøde (fælles forløb)",
    "follow_up_meeting": "opfølgningsmøde (fælles forløb)",
}
HISTORY = {
    "routed": "sorteret til kommunens kø",
    "triaged": "sendt til manuel sortering (triage)",
    "assign": "tildelt kommunen af driften",
    "pull": "taget",
    "decide": "afgjort",
    "exception": "undtaget fra behandlingsfristen",
    "note": "intern note skrevet",
    "duplicate_received": "modtaget igen (samme besked)",
    "read": "læst",
    "read_raw": "original besked hentet",
    "read_attachment": "bilag hentet",
    "message_sender": "svar sendt til afsender",
    "return_not_sent": "tilbagevisning kunne ikke sendes (ingen adresse)",
    "meeting": "møde registreret med handleplan",
    "explanation": "skriftlig forklaring givet",
    "read_plan": "handleplan læst",
    "read_meetings": "møder læst",
    "transfer": "overført til en anden kommune",
}
MAIL_KINDS = {
    "receipt": "kvittering",
    "committee_message": "svar fra udvalget",
    "alert": "fristadvarsel",
    "medcom_answer": "MedCom-kvittering",
    "urgent": "besked om hastesag",
    "forward": "videresendelse til enhed",
}
TRANSFER_REASONS = {"moved": "barnet er flyttet", "wrong_municipality": "hører til en anden kommune"}
DELIVERY = {
    "sent": "sendt til enheden",
    "pending": "på vej til enheden",
    "failed": "IKKE LEVERET: afvist af mailserveren",
    "no_address": "IKKE LEVERET: enheden har ingen adresse",
}
# What a page says after an action went well: the address carries only the key (`?ok=svar`).
DONE = {
    "taget": "Du har taget sagen.",
    "svar": "Svaret er sendt til afsenderen.",
    "note": "Noten er gemt. Den sendes ikke til nogen.",
    "afgoerelse": "Afgørelsen er gemt.",
    "undtagelse": "Undtagelsen er gemt; behandlingsfristen er stoppet.",
    "tildelt": "Henvendelsen er tildelt kommunen og ligger nu i dens kø.",
    "moede": "Mødet og handleplanen er gemt.",
    "forklaring": "Forklaringen er gemt; fristen for opfølgningsmødet er stoppet.",
    "overfoert": "Henvendelsen er overført til den anden kommune, og afsenderen har fået besked.",
    "sendt-igen": "Posten sendes igen.",
}
# What did not happen, above the reasons why.
FAILED = {
    "taget": "Sagen blev ikke taget",
    "svar": "Svaret blev ikke sendt",
    "note": "Noten blev ikke gemt",
    "afgoerelse": "Afgørelsen blev ikke gemt",
    "undtagelse": "Undtagelsen blev ikke gemt",
    "moede": "Mødet blev ikke gemt",
    "forklaring": "Forklaringen blev ikke gemt",
    "overfoer": "Henvendelsen blev ikke overført",
}
# A refusal in the user's language; the API's English sentence is the fallback.
REFUSALS = {
    "forbidden": "Du har ikke adgang til denne side.",
    "invalid_state": "Det kan ikke lade sig gøre i henvendelsens nuværende tilstand "
    "(måske har en kollega lige taget eller afgjort den). Genindlæs siden.",
    "sender_unreachable": "Afsenderen har ingen adresse, postkassen kan svare til. "
    "Kontakt afsenderen direkte.",
    "invalid_request": "Formularen er ikke udfyldt rigtigt.",
}

TEMPLATE_GLOBALS = {
    "STATES": STATES,
    "OUTCOMES": OUTCOMES,
    "SENDER_KINDS": SENDER_KINDS,
    "FLAGS": FLAGS,
    "LEVELS": LEVELS,
    "DEADLINES": DEADLINES,
    "HISTORY": HISTORY,
    "MAIL_KINDS": MAIL_KINDS,
    "RETURN_REASONS": RETURN_REASONS,
    "EXCEPTIONS": EXCEPTIONS,
    "FAILED": FAILED,
    "MEETING_NAMES": MEETING_NAMES,
    "RELATION_NAMES": RELATION_NAMES,
    "TRANSFER_REASONS": TRANSFER_REASONS,
    "DELIVERY": DELIVERY,
}
